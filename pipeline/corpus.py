"""Reading and validating parallel text: the checks every stage relies on."""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.errors import DataError

# The data stage's name for DataError, kept for the callers that import it from here.
CorpusError = DataError


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """Yield the lines of a plain or gzipped UTF-8 file, without line endings."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}: line {number}: invalid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})"
                ) from None
            yield line.rstrip("\r\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    return list(iter_lines(path))


def read_parallel(src: str | os.PathLike, tgt: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """Both sides of a split, checked for emptiness and equal line counts."""
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    for path, lines in ((src, src_lines), (tgt, tgt_lines)):
        if not lines:
            raise CorpusError(f"{path}: empty file: split '{split}' has no lines")
    if len(src_lines) != len(tgt_lines):
        raise CorpusError(
            f"misaligned corpus, split '{split}': {src} has {len(src_lines)} lines "
            f"but {tgt} has {len(tgt_lines)}"
        )
    return src_lines, tgt_lines


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def count_lines(path: str | os.PathLike) -> int:
    with _open_binary(Path(path)) as f:
        return sum(1 for _ in f)
