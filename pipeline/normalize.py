"""Moses punctuation normalisation of one file (sacremoses), or a verified copy when switched off.

    python -m pipeline.normalize --lang de IN OUT [--off] [--workers N]

The file is streamed in chunks; with --workers N > 1 the chunks are normalised by N processes and
written in input order (the output is the same for any N).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sacremoses import MosesPunctNormalizer

from pipeline.cli import run
from pipeline.corpus import iter_lines, write_lines
from pipeline.streaming import ordered_map


def normalizer(lang: str):
    moses = MosesPunctNormalizer(lang=lang)
    # Normalisation may not add or remove line breaks: alignment depends on it.
    return lambda line: moses.normalize(line).replace("\n", " ").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", required=True)
    parser.add_argument("--off", action="store_true", help="copy without normalising")
    parser.add_argument("--workers", type=int, default=1, help="processes normalising chunks of lines")
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    lines = iter_lines(args.input)
    if not args.off:
        normalizer(args.lang)  # an unknown language fails here, before any worker starts
        lines = ordered_map(normalizer, (args.lang,), lines, args.workers)
    write_lines(args.output, lines)


if __name__ == "__main__":
    run(main)
