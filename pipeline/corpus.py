"""Reading and validating parallel text: the checks every stage relies on.

Every failure to read or write a file here ends in a DataError that names the file (and, when some
lines were read, the last good line): a plain-text file named `.gz`, a truncated or corrupt gzip,
permission denied, a directory, an I/O error. No gzip, zlib or OS exception escapes raw.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_error(path: str | os.PathLike, err: BaseException, lines_read: int = 0) -> DataError:
    """The DataError for `err`, raised while opening or reading `path` after `lines_read` good lines."""
    after = f" after line {lines_read}" if lines_read else ""
    if isinstance(err, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if isinstance(err, gzip.BadGzipFile) and not lines_read and str(err).startswith("Not a gzipped file"):
        return DataError(f"{path}: not a gzip file ({err}): a plain-text file must not be named .gz")
    if isinstance(err, EOFError):
        where = after or " before the end of the first line"
        return DataError(f"{path}: truncated gzip file: the compressed data ends{where} ({err})")
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        return DataError(f"{path}: corrupt gzip data{after} ({err})")
    if isinstance(err, OSError):
        return DataError(f"{path}: cannot read{after}: {err.strerror or err}")
    return DataError(f"{path}: cannot read{after}: {type(err).__name__}: {err}")


# What reading a plain or gzipped file can raise besides our own checks.
READ_ERRORS = (OSError, EOFError, zlib.error)


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """Yield the lines of a plain or gzipped UTF-8 file, without line endings."""
    path = Path(path)
    number = 0
    try:  # not path.exists() first: it raises a bare PermissionError for a directory we may not enter
        f = _open_binary(path)
    except READ_ERRORS as err:
        raise read_error(path, err) from None
    with f:
        readline = f.readline
        while True:
            try:
                raw = readline()
            except READ_ERRORS as err:
                raise read_error(path, err, number) from None
            if not raw:
                return
            number += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                hint = ": gzip data in a file not named .gz" if number == 1 and raw.startswith(GZIP_MAGIC) else ""
                raise DataError(
                    f"{path}: line {number}: invalid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r}){hint}"
                ) from None
            yield line.rstrip("\r\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    return list(iter_lines(path))


def read_parallel(src: str | os.PathLike, tgt: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """Both sides of a split, checked for emptiness and equal line counts."""
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    for path, lines in ((src, src_lines), (tgt, tgt_lines)):
        if not lines:
            raise DataError(f"{path}: empty file: split '{split}' has no lines")
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"misaligned corpus, split '{split}': {src} has {len(src_lines)} lines "
            f"but {tgt} has {len(tgt_lines)}"
        )
    return src_lines, tgt_lines


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write atomically: a reader never sees a half-written file.

    A failure to write (permission, full disk) is a DataError naming `path`; an error raised by
    `lines` itself passes through unchanged. Either way nothing is left at `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                try:
                    f.write(line)
                    f.write("\n")
                except OSError as err:
                    raise _write_error(path, err) from None
            try:
                f.flush()
            except OSError as err:
                raise _write_error(path, err) from None
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise _write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_error(path: Path, err: OSError) -> DataError:
    return DataError(f"{path}: cannot write: {err.strerror or err}")


def count_lines(path: str | os.PathLike) -> int:
    """Lines in a plain or gzipped file (read errors name the file, as iter_lines does)."""
    path = Path(path)
    number = 0
    try:
        with _open_binary(path) as f:
            for _ in f:
                number += 1
    except READ_ERRORS as err:
        raise read_error(path, err, number) from None
    return number
