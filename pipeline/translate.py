"""Translate raw text with any trained model, end to end.

    python -m pipeline.translate --model work/models/teacher/model.pt < input.de > output.en
    python -m pipeline.translate --model work/models/student_baseline/model.pt --beam 1 -i in.de -o out.en

Source lines are Moses punctuation-normalised and SentencePiece-encoded as in the data stage,
decoded, and the output SentencePiece-decoded and Moses-detokenised: plain text in, plain text out,
one line per line. The SentencePiece model, the dictionaries and the languages are found from the
checkpoint (its training data directory, work/data/bin, and ../spm/spm.model beside it) unless given.

Backends: a fairseq checkpoint (a .pt file, or a directory with model.pt), or a CTranslate2 model
directory (model.bin: `python -m pipeline.ct2 convert`, or an exported student, `snakemake export`),
which runs without importing torch or fairseq and brings its own SentencePiece model and languages:

    python -m pipeline.translate --model export/student_seq_kd < input.de > output.en
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from pipeline.cli import run
from pipeline.corpus import CorpusError, iter_lines

if TYPE_CHECKING:  # torch and fairseq are imported only for a fairseq checkpoint
    from pipeline.decode import BatchSettings, GenerationSettings, LoadedModel

log = logging.getLogger("pipeline.translate")


class Translator(Protocol):
    """What translate needs from a backend: spm-encoded source lines in, best target pieces out."""

    source_lang: str
    target_lang: str
    spm_model: Path  # the SentencePiece model the backend's vocabulary was built with

    def translate_pieces(self, lines: list[str]) -> list[str]: ...


class Codec(Protocol):
    def encode(self, line: str) -> str: ...

    def decode(self, pieces: str) -> str: ...


class FairseqTranslator:
    def __init__(self, lm: LoadedModel, spm_model: Path, gen: GenerationSettings, batch: BatchSettings):
        self.lm, self.gen, self.batch = lm, gen, batch
        self.source_lang, self.target_lang, self.spm_model = lm.source_lang, lm.target_lang, spm_model

    def translate_pieces(self, lines: list[str]) -> list[str]:
        from pipeline.decode import decode_lines

        return [nbest[0].tokens for nbest in decode_lines(self.lm, lines, self.gen, self.batch)]


def is_ct2_dir(model: Path) -> bool:
    return model.is_dir() and (model / "model.bin").is_file() and not (model / "model.pt").is_file()


FAIRSEQ_MAX_TOKENS = 6000


def ct2_batch(args: argparse.Namespace, meta: dict, device: str = "cpu"):
    """--max-tokens / --batch-size if given, else the batch the export measured its speed with, else the device's default.

    Small batches are CTranslate2's fastest on a CPU (pipeline.ct2.DEFAULT_CPU_BATCH); fairseq's 6,000 tokens are not.
    """
    from pipeline import ct2

    if args.max_tokens or args.batch_size:
        return ct2.BatchSettings(max_tokens=args.max_tokens, batch_size=args.batch_size)
    recorded = meta.get("decoding", {})
    if recorded.get("max_tokens") or recorded.get("batch_size"):
        return ct2.BatchSettings(max_tokens=recorded.get("max_tokens"), batch_size=recorded.get("batch_size"))
    return ct2.DEFAULT_CPU_BATCH if device == "cpu" else ct2.BatchSettings(max_tokens=FAIRSEQ_MAX_TOKENS)


def open_translator(args: argparse.Namespace) -> Translator:
    """The backend for --model: a fairseq checkpoint (file, or directory with model.pt) or a CTranslate2 directory."""
    model = Path(args.model)
    if not model.exists():
        hint = f" (train it first: `snakemake {model}`)" if model.match("work/models/*/model.pt") else ""
        raise CorpusError(f"--model {model}: no such file or directory{hint}")
    if is_ct2_dir(model):
        from pipeline import ct2

        gen = ct2.GenerationSettings(beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
        loaded = ct2.load(model, compute_type=args.compute_type, threads=args.threads, inter_threads=args.inter_threads,
                          intra_threads=args.intra_threads, cpu=args.cpu, use_vmap=args.vmap)
        batch = ct2_batch(args, loaded.meta, loaded.device)
        return ct2.Ct2Translator(loaded, gen, batch, spm_model=Path(args.spm) if args.spm else None,
                                 src=args.src, tgt=args.tgt)
    if model.is_dir() and not (model / "model.pt").is_file():
        raise CorpusError(f"--model {model}: a directory without model.pt (fairseq) or model.bin (CTranslate2)")
    import torch

    from pipeline.decode import BatchSettings, GenerationSettings, find_spm, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = GenerationSettings(beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    batch = BatchSettings(max_tokens=args.max_tokens or FAIRSEQ_MAX_TOKENS, batch_size=args.batch_size)
    lm = load_model(model, data_dir=args.data, src=args.src, tgt=args.tgt, cpu=args.cpu, fp16=args.fp16)
    return FairseqTranslator(lm, find_spm(lm, args.spm), gen, batch)


def open_codec(translator: Translator, normalize: bool, detokenize: bool) -> Codec:
    """Raw text <-> pieces as the data stage does it (pipeline.spm's codec needs no torch)."""
    from pipeline.spm import TextCodec

    if not isinstance(translator, FairseqTranslator):
        normalize = normalize and getattr(translator, "normalize", True)
    return TextCodec(translator.spm_model, translator.source_lang, translator.target_lang,
                     normalize=normalize, detokenize=detokenize)


def translate_lines(translator: Translator, codec: Codec, lines: list[str]) -> list[str]:
    """Plain-text translations of plain-text lines; an empty line stays empty (it is not decoded)."""
    encoded = [codec.encode(line) for line in lines]
    todo = [i for i, pieces in enumerate(encoded) if pieces]
    out = [""] * len(lines)
    for i, pieces in zip(todo, translator.translate_pieces([encoded[i] for i in todo]), strict=True):
        out[i] = codec.decode(pieces)
    return out


def _stdin_lines() -> Iterator[str]:
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise CorpusError(f"<stdin>: line {number}: invalid UTF-8 (byte {err.start})") from None


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", required=True, help="fairseq checkpoint (e.g. work/models/teacher/model.pt) "
                        "or CTranslate2 model directory (e.g. export/teacher)")
    parser.add_argument("--spm", help="SentencePiece model (default: found from the checkpoint's data directory)")
    parser.add_argument("--data", help="directory with the dictionaries (default: the checkpoint's, work/data/bin)")
    parser.add_argument("--src", help="source language (default: the checkpoint's)")
    parser.add_argument("--tgt", help="target language (default: the checkpoint's)")
    parser.add_argument("-i", "--input", type=Path, help="input file (default: stdin)")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    parser.add_argument("--beam", type=int, default=5, help="beam size (1 = greedy)")
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--max-len-a", type=float, default=1.2, help="output length cap: a * source length + b")
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="padded source tokens per batch (default: fairseq 6000; a CTranslate2 directory: the batch "
                        "its export recorded, else 1000 with --batch-size 8 on CPU, 6000 on GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch")
    parser.add_argument("--chunk-lines", type=int, default=2000, help="lines read and translated at a time")
    parser.add_argument("--no-normalize", action="store_true", help="skip Moses punctuation normalisation")
    parser.add_argument("--no-detok", action="store_true", help="skip Moses detokenisation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even if CUDA is available")
    parser.add_argument("--fp16", action="store_true", help="half precision (CUDA only; fairseq checkpoints)")
    parser.add_argument("--compute-type", default="auto",
                        help="CTranslate2 directory: int8, float16, float32, ... (default auto: fastest for the device)")
    parser.add_argument("--inter-threads", type=int, help="CTranslate2 directory: translators decoding batches at once")
    parser.add_argument("--intra-threads", type=int, help="CTranslate2 directory: threads per translator")
    parser.add_argument("--vmap", action="store_true", default=None,
                        help="CTranslate2 directory: decode with its vocabulary shortlist (vmap.txt; default: if the "
                        "export chose it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="fairseq's log messages too")
    args = parser.parse_args()
    if not args.verbose:
        for name in ("fairseq", "pipeline.decode", "pipeline.ct2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.input is not None and not args.input.is_file():
        raise CorpusError(f"--input {args.input}: no such file")

    translator = open_translator(args)
    codec = open_codec(translator, normalize=not args.no_normalize, detokenize=not args.no_detok)
    if args.input is None and sys.stdin.isatty():
        print(f"reading {translator.source_lang} sentences from stdin, one per line; end with Ctrl-D", file=sys.stderr)
    lines = iter_lines(args.input) if args.input is not None else _stdin_lines()
    out: IO[str] = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for chunk in _chunks(lines, args.chunk_lines):
            for line in translate_lines(translator, codec, chunk):
                out.write(line + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    run(main)
