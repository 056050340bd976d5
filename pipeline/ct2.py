"""`python -m pipeline.ct2 convert ...`: convert a fairseq checkpoint to a CTranslate2 model directory.

    python -m pipeline.ct2 convert --model work/models/teacher-<key>/model.pt --out work/ct2/teacher-<key> \
        [--data work/data/<dir>/bin] [--spm work/data/<dir>/spm/spm.model] [--quantization float32] [--no-normalize] [--vmap FILE]

The command line the rules run; the code lives in pipeline.decoding (convert: the conversion;
ct2_backend: loading and decoding; compute: compute types and threads; ct2_dir: the directory).
"""

from __future__ import annotations

import argparse

from pipeline.cli import run
from pipeline.decoding import convert
from pipeline.decoding.compute import COMPUTE_TYPES  # noqa: F401 (pipeline/rules/ct2.smk reads it from here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert.add_arguments(sub.add_parser("convert", help="fairseq checkpoint -> CTranslate2 model directory"))
    convert.convert_from_args(parser.parse_args())


if __name__ == "__main__":
    run(main)
