"""A joint SentencePiece model (Python API: the pip package has no spm_* commands).

    python -m pipeline.spm train --model-prefix P --vocab-size 8000 --model-type unigram TRAIN_FILES...
    python -m pipeline.spm encode --model P.model IN OUT [--workers N]
    python -m pipeline.spm decode --model P.model IN OUT [--workers N]

Encoding and decoding stream the file in chunks; with --workers N > 1, N processes each load the
model once and the chunks are written in input order (the output is the same for any N). Training
reads a bounded sample: SentencePiece keeps at most input_sentence_size (2,000,000) sentences,
drawn at random from the stream, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import sentencepiece as spm

from pipeline.cli import run
from pipeline.corpus import CorpusError, iter_lines, write_lines
from pipeline.streaming import ordered_map


def train(inputs: list[Path], prefix: Path, vocab_size: int, model_type: str, character_coverage: float, threads: int) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain.from_iterable(iter_lines(p) for p in inputs),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        num_threads=threads,
        # A small corpus (the smoke slice) may not support the full vocabulary: take what it has.
        hard_vocab_limit=False,
        # fairseq adds its own <s>, <pad>, </s>, <unk>; only <unk> is needed inside the pieces.
        bos_id=-1,
        eos_id=-1,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        minloglevel=1,
    )


def load(model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(model))


def encode_line(sp: spm.SentencePieceProcessor, line: str) -> str:
    return " ".join(sp.encode(line, out_type=str))


def decode_line(sp: spm.SentencePieceProcessor, line: str) -> str:
    return sp.decode(line.split())


def line_encoder(model: Path):
    """line -> pieces joined by spaces, for ordered_map (each worker loads the model once)."""
    sp = load(model)
    return lambda line: encode_line(sp, line)


def line_decoder(model: Path):
    sp = load(model)
    return lambda line: decode_line(sp, line)


class TextCodec:
    """Raw text to model input and model output back to plain text, as the data stage does it.

    Source: Moses punctuation normalisation (when the data stage used it), then SentencePiece.
    Target: SentencePiece decoding, then Moses detokenisation.
    """

    def __init__(self, spm_model: str | os.PathLike, src: str, tgt: str, normalize: bool = True, detokenize: bool = True):
        from sacremoses import MosesDetokenizer

        from pipeline.normalize import normalizer

        spm_model = Path(spm_model)
        if not spm_model.is_file():
            raise CorpusError(f"{spm_model}: no such SentencePiece model")
        self.sp = load(spm_model)
        self._normalize = normalizer(src) if normalize else None
        self._detok = MosesDetokenizer(lang=tgt) if detokenize else None

    def encode(self, line: str) -> str:
        if self._normalize is not None:
            line = self._normalize(line)
        return " ".join(self.sp.encode(line, out_type=str))

    def decode(self, pieces: str) -> str:
        text = self.sp.decode(pieces.split())
        if self._detok is not None:
            text = self._detok.detokenize(text.split())
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model-prefix", type=Path, required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    t.add_argument("--character-coverage", type=float, default=1.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("inputs", type=Path, nargs="+")
    for name in ("encode", "decode"):
        p = sub.add_parser(name)
        p.add_argument("--model", type=Path, required=True)
        p.add_argument("--workers", type=int, default=1, help="processes working on chunks of lines")
        p.add_argument("input", type=Path)
        p.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.command == "train":
        train(args.inputs, args.model_prefix, args.vocab_size, args.model_type, args.character_coverage, args.threads)
        return
    load(args.model)  # a missing or broken model fails here, before any worker starts
    factory = line_encoder if args.command == "encode" else line_decoder
    write_lines(args.output, ordered_map(factory, (args.model,), iter_lines(args.input), args.workers))


if __name__ == "__main__":
    run(main)
