"""Translate raw text with any trained model, end to end.

    python -m pipeline.translate --model work/models/teacher-<key>/model.pt < input.de > output.en
    python -m pipeline.translate --model work/models/student_baseline-<key>/model.pt --beam 1 -i in.de -o out.en

Source lines are Moses punctuation-normalised and SentencePiece-encoded as in the data stage,
decoded, and the output SentencePiece-decoded and Moses-detokenised: plain text in, plain text out,
one line per line. The SentencePiece model, the dictionaries and the languages are found from the
model unless given: spm.model beside it first, else the data stage's (../spm/spm.model beside the
checkpoint's training data directory, work/data/<dir>/bin). The decoding flags are pipeline.decoding's.

Backends: a fairseq checkpoint (a .pt file, or a directory with model.pt), or a CTranslate2 model
directory (model.bin: `python -m pipeline.ct2 convert`, or an exported student, `snakemake export`),
which runs without importing torch or fairseq and brings its own SentencePiece model and languages:

    python -m pipeline.translate --model export/default/student_seq_kd < input.de > output.en
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Protocol

from pipeline.cli import run
from pipeline.corpus import iter_lines
from pipeline.decoding import Backend, SearchOptions, add_decoding_args, backend_from_args
from pipeline.errors import DataError

log = logging.getLogger("pipeline.translate")


class Codec(Protocol):
    def encode(self, line: str) -> str: ...

    def decode(self, pieces: str) -> str: ...


def open_codec(backend: Backend, spm: str | None, normalize: bool, detokenize: bool) -> Codec:
    """Raw text <-> pieces as the data stage does it (pipeline.spm's codec needs no torch).

    Punctuation is normalised unless --no-normalize or the model records that the data stage did not.
    """
    from pipeline.spm import TextCodec

    return TextCodec(backend.spm_model(spm), backend.source_lang, backend.target_lang,
                     normalize=normalize and backend.normalize_punctuation, detokenize=detokenize)


def translate_lines(backend: Backend, options: SearchOptions, codec: Codec, lines: list[str]) -> list[str]:
    """Plain-text translations of plain-text lines; an empty line stays empty (it is not decoded)."""
    encoded = [codec.encode(line) for line in lines]
    todo = [i for i, pieces in enumerate(encoded) if pieces]
    out = [""] * len(lines)
    best = [nbest[0].tokens for nbest in backend.decode([encoded[i] for i in todo], options).hypotheses]
    for i, pieces in zip(todo, best, strict=True):
        out[i] = codec.decode(pieces)
    return out


def _stdin_lines() -> Iterator[str]:
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise DataError(f"<stdin>: line {number}: invalid UTF-8 (byte {err.start})") from None


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", required=True, help="fairseq checkpoint (e.g. work/models/teacher-<key>/model.pt) "
                        "or CTranslate2 model directory (e.g. export/default/teacher)")
    parser.add_argument("--spm", help="SentencePiece model (default: spm.model beside the model, else the data stage's)")
    parser.add_argument("--data", help="directory with the dictionaries (default: the checkpoint's, work/data/<dir>/bin)")
    parser.add_argument("--src", help="source language (default: the model's)")
    parser.add_argument("--tgt", help="target language (default: the model's)")
    parser.add_argument("-i", "--input", type=Path, help="input file (default: stdin)")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    parser.add_argument("--chunk-lines", type=int, default=2000, help="lines read and translated at a time")
    parser.add_argument("--no-normalize", action="store_true", help="skip Moses punctuation normalisation")
    parser.add_argument("--no-detok", action="store_true", help="skip Moses detokenisation")
    parser.add_argument("-v", "--verbose", action="store_true", help="fairseq's log messages too")
    add_decoding_args(parser, nbest=False, backend=False)
    args = parser.parse_args()
    if not args.verbose:
        for name in ("fairseq", "pipeline.decoding"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.input is not None and not args.input.is_file():
        raise DataError(f"--input {args.input}: no such file")

    options = SearchOptions.from_args(args)
    backend = backend_from_args(args)  # the backend --model is: a fairseq checkpoint or a CTranslate2 directory
    codec = open_codec(backend, args.spm, normalize=not args.no_normalize, detokenize=not args.no_detok)
    if args.input is None and sys.stdin.isatty():
        print(f"reading {backend.source_lang} sentences from stdin, one per line; end with Ctrl-D", file=sys.stderr)
    lines = iter_lines(args.input) if args.input is not None else _stdin_lines()
    out: IO[str] = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for chunk in _chunks(lines, args.chunk_lines):
            for line in translate_lines(backend, options, codec, chunk):
                out.write(line + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    run(main)
