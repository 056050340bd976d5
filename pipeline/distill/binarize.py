"""Binarise the distilled corpus with the teacher's dictionary, next to the real dev and test sets.

    python -m pipeline.distill.binarize --trainpref work/distill/<dir>/train --src de --tgt en \
        --teacher-bin work/data/<dir>/bin --destdir work/distill/<dir>/bin [--workers 2] \
        [--add-references work/data/<dir>/spm/train]

The teacher's dictionaries are imposed (never rebuilt from the distilled text), so a word-KD student
trained on DESTDIR shares the teacher's vocabulary; valid and test are copied from the teacher's
data, so a student trained on DESTDIR is validated on the real dev set. With --add-references the
training set is the distilled corpus followed by the original (spm-encoded, cleaned) training pairs:
every source twice, once with the teacher's target and once with the reference (config
distill.add_references). The result is built in a temporary directory, verified (dictionaries
identical, one binarised sentence per line), then moved.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
from pathlib import Path

from pipeline.cli import run
from pipeline.corpus import count_lines
from pipeline.errors import DataError
from pipeline.streaming import copy_lines

log = logging.getLogger("pipeline.distill.binarize")
COPIED_SPLITS = ("valid", "test")


def dataset_size(prefix: Path) -> int:
    """Sentences in a fairseq mmap indexed dataset (PREFIX.idx / PREFIX.bin)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    if not Path(f"{prefix}.idx").exists():
        raise DataError(f"{prefix}.idx: no such file")
    return len(MMapIndexedDataset(str(prefix)))


def paired_lines(prefix: Path, src: str, tgt: str) -> int:
    """Lines of PREFIX.src, checked equal to those of PREFIX.tgt."""
    lines = {lang: count_lines(f"{prefix}.{lang}") for lang in (src, tgt)}
    if lines[src] != lines[tgt]:
        raise DataError(f"{prefix}.{src} has {lines[src]} lines but {prefix}.{tgt} has {lines[tgt]}")
    return lines[src]


def concatenate(prefixes: list[Path], src: str, tgt: str, out_prefix: Path) -> None:
    """OUT_PREFIX.{src,tgt}: the files of each prefix one after the other, copied in blocks of bytes."""
    for lang in (src, tgt):
        with open(f"{out_prefix}.{lang}", "wb") as out:
            for prefix in prefixes:
                if not copy_lines(f"{prefix}.{lang}", out)[1]:  # its last line would run into the next file's first
                    raise DataError(f"{prefix}.{lang}: the last line has no newline")


def binarize(trainpref: Path, src: str, tgt: str, teacher_bin: Path, destdir: Path, workers: int,
             add_references: Path | None = None) -> list[Path]:
    """Build DESTDIR (training set: TRAINPREF's pairs, then ADD_REFERENCES's if given); returns the files written."""
    dicts = {lang: teacher_bin / f"dict.{lang}.txt" for lang in (src, tgt)}
    for lang, path in dicts.items():
        if not path.exists():
            raise DataError(f"{path}: no such file (the teacher's {lang} dictionary)")
    pair = f"{src}-{tgt}"
    copied = [teacher_bin / f"{split}.{pair}.{lang}.{ext}" for split in COPIED_SPLITS for lang in (src, tgt) for ext in ("bin", "idx")]
    for path in copied:
        if not path.exists():
            raise DataError(f"{path}: no such file (the teacher's binarised {path.name.split('.')[0]} set)")
    distilled = paired_lines(trainpref, src, tgt)
    total = distilled + (paired_lines(add_references, src, tgt) if add_references else 0)

    tmp = destdir.with_name(destdir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    mixed = destdir.with_name(destdir.name + ".mix.tmp")
    shutil.rmtree(mixed, ignore_errors=True)
    if add_references:
        mixed.mkdir(parents=True)
        concatenate([trainpref, add_references], src, tgt, mixed / "train")
        trainpref = mixed / "train"
    argv = [
        "--source-lang", src, "--target-lang", tgt, "--trainpref", str(trainpref), "--destdir", str(tmp),
        "--srcdict", str(dicts[src]), "--tgtdict", str(dicts[tgt]), "--workers", str(workers),
    ]
    log.info("fairseq preprocess %s", " ".join(argv))
    from fairseq import options
    from fairseq_cli import preprocess

    preprocess.main(options.get_preprocessing_parser().parse_args(argv))  # in-process: one fairseq import
    for lang, path in dicts.items():
        if not filecmp.cmp(path, tmp / path.name, shallow=False):
            raise DataError(f"{tmp / path.name}: differs from the teacher's dictionary {path}")
        size = dataset_size(tmp / f"train.{pair}.{lang}")
        if size != total:
            raise DataError(f"{tmp}/train.{pair}.{lang}: {size} binarised sentences, {trainpref}.{lang} has {total} lines")
    shutil.rmtree(mixed, ignore_errors=True)
    for path in copied:
        shutil.copyfile(path, tmp / path.name)  # a copy, not a link: a fresh mtime keeps Snakemake's times in order
    destdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(tmp.iterdir()):
        os.replace(path, destdir / path.name)
        written.append(destdir / path.name)
    tmp.rmdir()
    log.info("binarised %d distilled pairs%s into %s", distilled,
             f" and {total - distilled} reference pairs" if add_references else "", destdir)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainpref", type=Path, required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--tgt", required=True)
    parser.add_argument("--teacher-bin", type=Path, required=True)
    parser.add_argument("--destdir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--add-references", type=Path, default=None, metavar="PREFIX",
                        help="append these spm-encoded pairs (PREFIX.src, PREFIX.tgt) to the training set")
    args = parser.parse_args()
    binarize(args.trainpref, args.src, args.tgt, args.teacher_bin, args.destdir, args.workers, args.add_references)


if __name__ == "__main__":
    run(main)
