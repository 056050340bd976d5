"""Moses punctuation normalisation of one file (sacremoses), or a verified copy when switched off.

    python -m pipeline.normalize --lang de IN OUT [--off]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sacremoses import MosesPunctNormalizer

from pipeline.cli import run
from pipeline.corpus import iter_lines, write_lines


def normalizer(lang: str):
    moses = MosesPunctNormalizer(lang=lang)
    # Normalisation may not add or remove line breaks: alignment depends on it.
    return lambda line: moses.normalize(line).replace("\n", " ").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", required=True)
    parser.add_argument("--off", action="store_true", help="copy without normalising")
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    lines = iter_lines(args.input)
    if not args.off:
        norm = normalizer(args.lang)
        lines = (norm(line) for line in lines)
    write_lines(args.output, lines)


if __name__ == "__main__":
    run(main)
