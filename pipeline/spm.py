"""A joint SentencePiece model (Python API: the pip package has no spm_* commands).

    python -m pipeline.spm train --model-prefix P --vocab-size 8000 --model-type unigram TRAIN_FILES...
    python -m pipeline.spm encode --model P.model [--max-pieces N] [--workers N] IN OUT
    python -m pipeline.spm decode --model P.model [--workers N] IN OUT

Encoding and decoding stream the file in chunks; with --workers N > 1, N processes each load the
model once and the chunks are written in input order (the output is the same for any N). Training
reads a bounded sample: SentencePiece keeps at most input_sentence_size (2,000,000) sentences,
drawn at random from the stream, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from pipeline.cli import run
from pipeline.corpus import iter_lines, write_lines
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.streaming import ordered_map

# fairseq's transformer default for max_source_positions and max_target_positions, kept by every preset.
DEFAULT_MAX_POSITIONS = 1024


def train(inputs: list[Path], prefix: Path, vocab_size: int, model_type: str, character_coverage: float, threads: int) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    read_failure: list[DataError] = []

    def sentences() -> Iterator[str]:
        try:
            yield from itertools.chain.from_iterable(iter_lines(p) for p in inputs)
        except DataError as err:  # SentencePiece would turn it into a RuntimeError without the file
            read_failure.append(err)
            raise

    try:
        _train(sentences(), prefix, vocab_size, model_type, character_coverage, threads)
    except RuntimeError:
        if read_failure:
            raise read_failure[0] from None
        raise


def _train(sentences: Iterator[str], prefix: Path, vocab_size: int, model_type: str, character_coverage: float,
           threads: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
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


def max_pieces_for(max_positions: int) -> int:
    """Pieces per line a model with `max_positions` positions takes: fairseq appends EOS to every line."""
    return max_positions - 1


def check_lengths(lines_of_pieces: Iterable[str], path: str | os.PathLike, limit: int) -> Iterator[str]:
    """Pass spm-encoded lines through unchanged; fail if any has more than `limit` pieces.

    The policy for dev, test and every evaluation set: a line longer than the models can take
    (limit = max_pieces_for(max positions); EOS is not counted) is an error at data time, never
    cut or dropped. fairseq would otherwise stop in validation or evaluation with a 0-based sample
    index and no file, while pipeline.translate and CTranslate2 would truncate it: the backends
    would disagree and a score would not be that of the whole reference set. Training lines are
    bounded by the cleaning step instead (data.clean.max_tokens).

    Pieces are counted as fairseq's binariser counts tokens (whitespace-separated). Every line is
    checked before the error, which comes once the input is exhausted (nothing written by
    write_lines is kept): it names `path`, the first over-long line (1-based) with its count, the
    limit, and the other over-long lines.
    """
    if limit < 1:
        raise ConfigError(f"maximum pieces per line {limit}: must be >= 1")
    return _checked(lines_of_pieces, path, limit)


def _checked(lines_of_pieces: Iterable[str], path: str | os.PathLike, limit: int) -> Iterator[str]:
    over: list[tuple[int, int]] = []
    for number, line in enumerate(lines_of_pieces, start=1):
        count = len(line.split())
        if count > limit:
            over.append((number, count))
        yield line
    if over:
        number, count = over[0]
        others = ""
        if len(over) > 1:
            listed = ", ".join(str(n) for n, _ in over[1:11]) + (", ..." if len(over) > 11 else "")
            others = f" ({len(over)} lines over the limit; the others: {listed})"
        raise DataError(
            f"{path}: line {number}: {count} SentencePiece pieces, more than the {limit} a model takes "
            f"(its maximum positions minus EOS){others}; dev and test lines are never cut or dropped: "
            "shorten or remove them, on both sides of the split"
        )


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
            raise ModelError(f"{spm_model}: no such SentencePiece model")
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
        if name == "encode":
            p.add_argument("--max-pieces", type=int, metavar="N",
                           help="fail naming file and line if a line has more than N pieces "
                                "(dev and test: the models' maximum positions - 1, for EOS)")
        p.add_argument("--workers", type=int, default=1, help="processes working on chunks of lines")
        p.add_argument("input", type=Path)
        p.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.command == "train":
        train(args.inputs, args.model_prefix, args.vocab_size, args.model_type, args.character_coverage, args.threads)
        return
    load(args.model)  # a missing or broken model fails here, before any worker starts
    factory = line_encoder if args.command == "encode" else line_decoder
    lines = ordered_map(factory, (args.model,), iter_lines(args.input), args.workers)
    if getattr(args, "max_pieces", None) is not None:
        if args.max_pieces < 1:
            raise ConfigError(f"--max-pieces {args.max_pieces}: must be >= 1")
        lines = check_lengths(lines, args.input, args.max_pieces)
    write_lines(args.output, lines)


if __name__ == "__main__":
    run(main)
