"""Streaming building blocks for corpora of any size: memory bounded by a chunk, never by the corpus.

- iter_parallel: both sides of a split, line by line, with read_parallel's checks and messages.
- AtomicOutputs: several output files written in one pass, each renamed into place only when all are
  complete (a killed or failed run leaves none of them, and a rerun removes its stale temporaries).
- ordered_map: a per-line function over a stream of lines in chunks, in a process pool when
  workers > 1, results in input order, a bounded number of chunks in flight.
- copy_lines: one file appended to an open binary file, its lines counted, copied inside the kernel.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from pipeline.corpus import iter_lines
from pipeline.errors import DataError

CHUNK_LINES = 10_000
COPY_BLOCK = 1 << 20  # bytes per read of copy_lines


def copy_lines(path: str | os.PathLike, out) -> tuple[int, bool]:
    """Append the file to the binary stream `out` (its lines are never all held); returns its newline count
    and whether it ends with a newline (an empty file does), so that a caller can refuse a last line that
    would run into the next file's first.

    Where `out` is a file and the kernel can copy between files (os.copy_file_range), the lines are counted
    in one pass of reads into a reused buffer and the bytes copied inside the kernel: no second copy through
    user space, where most of a merge's time (kernel time) went. Otherwise (another file system, an old
    kernel, a stream that is no file) one pass writes the blocks from user space and counts them.
    """
    with Path(path).open("rb") as f:  # (Path.open: where the merge's kill test interrupts it)
        fd_out = _file_descriptor(out) if hasattr(os, "copy_file_range") else None
        if fd_out is not None:
            n, last, size = 0, b"\n", 0
            buf = bytearray(COPY_BLOCK)
            while k := f.readinto(buf):
                n += buf.count(b"\n", 0, k)
                last = buf[k - 1:k]
                size += k
            f.seek(0)
            out.flush()  # what `out` holds goes first
            if _copy_in_kernel(f, fd_out, size):
                return n, last == b"\n"
        n, last = 0, b"\n"
        for block in iter(lambda: f.read(COPY_BLOCK), b""):
            out.write(block)
            n += block.count(b"\n")
            last = block[-1:]
    return n, last == b"\n"


def _file_descriptor(out) -> int | None:
    try:
        return out.fileno()
    except (AttributeError, OSError):  # (io.UnsupportedOperation is an OSError)
        return None


def _copy_in_kernel(f, fd_out: int, size: int) -> bool:
    """Copy `size` bytes from f's start to fd_out's position by os.copy_file_range; False where it cannot start."""
    copied = 0
    while copied < size:
        try:
            step = os.copy_file_range(f.fileno(), fd_out, size - copied)
        except OSError:
            if copied:
                raise
            return False  # (EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: nothing was copied, the caller writes the blocks)
        if step == 0:
            raise DataError(f"{f.name}: {size - copied} bytes fewer than counted: the file shrank while it was copied")
        copied += step
    return True


def iter_parallel(src: str | os.PathLike, tgt: str | os.PathLike, split: str) -> Iterator[tuple[str, str]]:
    """(source, target) pairs of a split, streamed; the same checks and messages as corpus.read_parallel.

    The checks on the whole files (empty, misaligned) can only fail at the end of the stream: write
    outputs through AtomicOutputs so that a failure leaves nothing behind.
    """
    src_iter, tgt_iter = iter_lines(src), iter_lines(tgt)
    end = object()
    n = 0
    while True:
        s, t = next(src_iter, end), next(tgt_iter, end)
        if s is end or t is end:
            break
        n += 1
        yield s, t
    n_src = n + (s is not end) + sum(1 for _ in src_iter)
    n_tgt = n + (t is not end) + sum(1 for _ in tgt_iter)
    for path, count in ((src, n_src), (tgt, n_tgt)):
        if count == 0:
            raise DataError(f"{path}: empty file: split '{split}' has no lines")
    if n_src != n_tgt:
        raise DataError(f"misaligned corpus, split '{split}': {src} has {n_src} lines but {tgt} has {n_tgt}")


class AtomicOutputs:
    """Text files written together: `with AtomicOutputs(a, b) as (fa, fb): ...`; renamed on success only."""

    def __init__(self, *paths: str | os.PathLike):
        self.paths = [Path(p) for p in paths]
        self._tmps: list[Path] = []
        self._files = []

    def __enter__(self):
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.*"):  # temporaries of an earlier, killed run
                stale.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            self._tmps.append(Path(tmp))
            self._files.append(os.fdopen(fd, "w", encoding="utf-8", newline="\n"))
        return self._files

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files:
            f.close()
        if exc_type is not None:
            for tmp in self._tmps:
                tmp.unlink(missing_ok=True)
            return
        umask = os.umask(0)
        os.umask(umask)
        for tmp, path in zip(self._tmps, self.paths, strict=True):
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from the rest of a group
            os.replace(tmp, path)


def publish_dir(tmp: Path, dest: Path) -> None:
    """Put a complete directory written under a temporary name in place of `dest` (replacing an old one).

    mkdtemp's 0700 would hide it from the rest of a group, so it gets the umask's permissions first.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def chunks(items: Iterable, size: int = CHUNK_LINES) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


_worker_fn: Callable[[str], str] | None = None


def _init_worker(factory: Callable[..., Callable[[str], str]], args: tuple) -> None:
    global _worker_fn
    _worker_fn = factory(*args)


def _apply(chunk: list[str]) -> list[str]:
    assert _worker_fn is not None
    return [_worker_fn(line) for line in chunk]


def ordered_map(
    factory: Callable[..., Callable[[str], str]],
    args: tuple,
    lines: Iterable[str],
    workers: int = 1,
    chunk_lines: int = CHUNK_LINES,
) -> Iterator[str]:
    """factory(*args) applied to every line, in order; each worker builds its own function once.

    factory must be a module-level function (it is sent to the worker processes). At most
    2 * workers chunks are in flight, so memory does not grow with the input.
    """
    if workers <= 1:
        fn = factory(*args)
        for line in lines:
            yield fn(line)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(factory, args)) as pool:
        pending: deque[Future] = deque()
        for chunk in chunks(lines, chunk_lines):
            pending.append(pool.submit(_apply, chunk))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
