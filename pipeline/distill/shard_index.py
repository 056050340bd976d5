"""The shard plan of the distillation: shard count from the corpus size, and byte offsets of every shard.

    python -m pipeline.distill.shard_index --shard-size 100000 --ids work/data/<dir>/clean/train.ids \
        --src-spm work/data/<dir>/spm/train.de --ref-spm work/data/<dir>/spm/train.en \
        --src-text work/data/<dir>/clean/train.de --ref-text work/data/<dir>/clean/train.en --out work/data/<dir>/distill_index-<shard_size>.json

The number of shards is ceil(lines / shard_size) (at least 1); shard k holds the positions
shards.shard_range(lines, shards, k), so no shard exceeds shard_size lines. For each of the five
files of the cleaned corpus the index records the byte offset where every shard starts (and the
file's size): a shard job seeks to its range and reads only its own lines, in memory proportional
to the shard, not to the corpus. The files are read once, in blocks, to build it (no copies of the
corpus on disk). The index also checks what every later stage relies on: the five files have the
same number of lines, and the ids are integers in strictly increasing order (line numbers of the
raw corpus), so that the shard owning any id is found from each shard's first id.

    from pipeline.distill.shard_index import shard_input
    ids, lines = shard_input("work/data/<dir>/distill_index-<shard_size>.json", shard, num_shards)  # the shard's source (spm)

(ShardIndex gives more: .range(shard) -> positions [start, end), .file("src_spm") -> the path, so a
message can name "FILE: line start + i + 1" as the whole-file reading did.)
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import run
from pipeline.corpus import write_lines
from pipeline.distill.shards import shard_range
from pipeline.errors import DataError

log = logging.getLogger("pipeline.distill.shard_index")
ROLES = ("ids", "src_spm", "ref_spm", "src_text", "ref_text")
BLOCK = 1 << 20
FORMAT = 1


def shard_count(lines: int, shard_size: int) -> int:
    """Decoding jobs for a corpus of `lines` sentences at most `shard_size` each (at least one)."""
    if shard_size < 1:
        raise DataError(f"shard size must be >= 1, got {shard_size}")
    return max(1, math.ceil(lines / shard_size))


def count_lines(path: Path) -> int:
    """Lines of a plain text file (a last line without a newline counts), read in blocks."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def line_offsets(path: Path, targets: list[int]) -> list[int]:
    """Byte offset where each of the (sorted, 0-based) target lines starts; the file size for lines past the end."""
    out: list[int] = []
    ti = 0
    while ti < len(targets) and targets[ti] == 0:
        out.append(0)
        ti += 1
    line, base = 0, 0  # line: newlines before base, i.e. the index of the line starting after the last one
    with path.open("rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            if ti == len(targets):
                break
            newlines = block.count(b"\n")
            if line + newlines >= targets[ti]:  # a target line starts in (or right after) this block
                pos = 0
                while ti < len(targets) and (nl := block.find(b"\n", pos)) >= 0:
                    pos, line = nl + 1, line + 1
                    while ti < len(targets) and targets[ti] == line:
                        out.append(base + pos)
                        ti += 1
                line += block.count(b"\n", pos)
            else:
                line += newlines
            base += len(block)
    size = path.stat().st_size
    return out + [size] * (len(targets) - len(out))


def check_ids(path: Path) -> int:
    """The number of ids, checked as integers in strictly increasing order; streamed."""
    previous = -1
    n = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):  # noqa: B007
            try:
                value = int(raw)
            except ValueError:
                raise DataError(f"{path}: line {n}: not an integer id: {raw.decode('utf-8', 'replace').rstrip()!r}") from None
            if value < 0:
                raise DataError(f"{path}: line {n}: negative id {value}")
            if value <= previous:
                kind = "repeated" if value == previous else f"smaller than the id before it ({previous})"
                raise DataError(f"{path}: line {n}: id {value} {kind}: ids must increase (line numbers of the raw corpus)")
            previous = value
    return n


def build_index(files: dict[str, Path], shard_size: int) -> dict:
    """The index of the five files (ROLES) for shards of at most shard_size lines."""
    missing = [role for role in ROLES if role not in files]
    if missing:
        raise DataError(f"shard index: no file given for {', '.join(missing)}")
    for path in files.values():
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix == ".gz":
            raise DataError(f"{path}: a shard index needs a plain (seekable) file, not gzip")
    n = check_ids(files["ids"])
    counts = {role: (n if role == "ids" else count_lines(path)) for role, path in files.items()}
    for role, path in files.items():
        if counts[role] != n:
            raise DataError(f"{path}: {counts[role]} lines, but {files['ids']} has {n} ids")
    shards = shard_count(n, shard_size)
    starts = [shard_range(n, shards, k)[0] for k in range(shards)] + [n]
    index = {"format": FORMAT, "lines": n, "shard_size": shard_size, "shards": shards, "files": {}}
    for role in ROLES:
        path = files[role]
        index["files"][role] = {"path": str(path), "size": path.stat().st_size, "offsets": line_offsets(path, starts)}
    first_ids = []
    with files["ids"].open("rb") as f:
        offsets = index["files"]["ids"]["offsets"]
        for k in range(shards):
            f.seek(offsets[k])
            first_ids.append(int(f.readline()) if offsets[k] < offsets[k + 1] else None)
    index["first_ids"] = first_ids  # None for an empty shard (more shards than lines)
    return index


@dataclass
class ShardIndex:
    path: Path
    lines: int
    shard_size: int
    shards: int
    files: dict
    first_ids: list

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardIndex:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file (the shard index: python -m pipeline.distill.shard_index)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            index = cls(path, int(data["lines"]), int(data["shard_size"]), int(data["shards"]), data["files"],
                        data["first_ids"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a shard index ({type(err).__name__}: {err})") from None
        for role in ROLES:
            if role not in index.files or len(index.files[role]["offsets"]) != index.shards + 1:
                raise DataError(f"{path}: not a shard index (file {role} missing or incomplete)")
        return index

    def check_count(self, num_shards: int) -> None:
        if num_shards != self.shards:
            raise DataError(f"{self.path}: the corpus has {self.shards} shards "
                            f"({self.lines} lines, shard size {self.shard_size}), this run has {num_shards}")

    def file(self, role: str) -> Path:
        """The file of a role (ROLES) as the index names it: for messages that cite its line numbers."""
        return Path(self.files[role]["path"])

    def range(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.shards:
            raise DataError(f"shard {shard} outside 0..{self.shards - 1} ({self.path})")
        return shard_range(self.lines, self.shards, shard)

    def read(self, role: str, shard: int) -> list[str]:
        """The lines of one shard of one file (without line endings), checked for UTF-8."""
        start, end = self.range(shard)
        entry = self.files[role]
        path = Path(entry["path"])
        if not path.is_file():
            raise DataError(f"{path}: no such file (named by the shard index {self.path})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise DataError(f"{path}: {size} bytes, but the shard index {self.path} was made for {entry['size']}:"
                            " the file changed since, rebuild the index")
        begin, stop = entry["offsets"][shard], entry["offsets"][shard + 1]
        with path.open("rb") as f:
            f.seek(begin)
            data = f.read(stop - begin)
        raw_lines = data.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        if len(raw_lines) != end - start:
            raise DataError(f"{path}: bytes {begin}..{stop} hold {len(raw_lines)} lines, expected {end - start}"
                            f" (lines {start + 1}..{end}): the file changed since the shard index {self.path} was made")
        lines = []
        for number, raw in enumerate(raw_lines, start=start + 1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {number}: invalid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
        return lines

    def ids(self, shard: int) -> list[int]:
        path = self.files["ids"]["path"]
        try:
            return [int(line) for line in self.read("ids", shard)]
        except ValueError:
            raise DataError(f"{path}: not an integer id in shard {shard}: the file changed since the index was made") from None

    def owner(self, rid: int) -> int | None:
        """The shard holding training id rid, or None when rid is no training id."""
        starts = [(first, k) for k, first in enumerate(self.first_ids) if first is not None]
        pos = bisect.bisect_right([first for first, _ in starts], rid) - 1
        if pos < 0:
            return None
        shard = starts[pos][1]
        return shard if rid in set(self.ids(shard)) else None


def shard_input(index_path: str | os.PathLike, shard: int, num_shards: int, role: str = "src_spm") -> tuple[list[int], list[str]]:
    """(ids, lines) of one shard of the cleaned corpus (by default its SentencePiece source), read by offset."""
    index = ShardIndex.load(index_path)
    index.check_count(num_shards)
    return index.ids(shard), index.read(role, shard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-size", type=int, required=True, help="at most this many sentences per shard")
    for role in ROLES:
        parser.add_argument(f"--{role.replace('_', '-')}", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    index = build_index({role: getattr(args, role) for role in ROLES}, args.shard_size)
    write_lines(args.out, [json.dumps(index, indent=1)])
    log.info("%d lines in %d shards of at most %d lines: %s", index["lines"], index["shards"], args.shard_size, args.out)


if __name__ == "__main__":
    run(main)
