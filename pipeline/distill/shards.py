"""Shard layout, the shard file format, and reassembly by sentence id.

A shard is a fixed, contiguous range of positions in the cleaned training corpus; its output is a
JSONL file with one record per sentence, {"id": int, "hyps": [{"text": str, "score": float}, ...]},
where id is the pair's id from work/data/<dir>/clean/train.ids (its line number in the raw corpus).
Reassembly never trusts positions in shard files: it indexes records by id and checks that every
training id occurs exactly once, in the shard that owns it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.corpus import iter_lines
from pipeline.errors import DataError

SHARD_FILE = re.compile(r"shard(\d+)-of-(\d+)\.jsonl$")


@dataclass(frozen=True)
class Hyp:
    text: str  # SentencePiece pieces joined by spaces, as fairseq's dictionary prints them
    score: float  # fairseq's hypothesis score (length-normalised log-probability)


@dataclass(frozen=True)
class NBest:
    id: int
    hyps: tuple[Hyp, ...]


def id_width(shards: int) -> int:
    """Digits of a shard id: at least 3, so that file names sort in shard order."""
    return max(3, len(str(shards - 1)))


def shard_name(index: int, shards: int) -> str:
    return f"{index:0{id_width(shards)}d}"


def shard_filename(index: int, shards: int) -> str:
    """The shard count is part of the name: outputs of another shard count are never reused."""
    return f"shard{shard_name(index, shards)}-of-{shard_name(shards, shards)}.jsonl"


def shard_range(n: int, shards: int, index: int) -> tuple[int, int]:
    """Positions [start, end) of shard `index` among n sentences: deterministic, sizes differ by at most 1."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if not 0 <= index < shards:
        raise ValueError(f"shard index {index} outside 0..{shards - 1}")
    return index * n // shards, (index + 1) * n // shards


def shard_of_position(position: int, n: int, shards: int) -> int:
    """The shard whose range holds `position` (inverse of shard_range)."""
    index = (position * shards) // n
    while shard_range(n, shards, index)[1] <= position:  # integer rounding: at most a step or two
        index += 1
    while shard_range(n, shards, index)[0] > position:
        index -= 1
    return index


def read_ids(path: str | os.PathLike) -> list[int]:
    """The ids file of the cleaned corpus: one non-negative integer per line, no repeats."""
    ids: list[int] = []
    seen: set[int] = set()
    for number, line in enumerate(iter_lines(path), start=1):
        try:
            value = int(line)
        except ValueError:
            raise DataError(f"{path}: line {number}: not an integer id: {line!r}") from None
        if value in seen:
            raise DataError(f"{path}: line {number}: id {value} repeated")
        seen.add(value)
        ids.append(value)
    return ids


def record_to_json(record: NBest) -> str:
    hyps = [{"text": h.text, "score": h.score} for h in record.hyps]
    return json.dumps({"id": record.id, "hyps": hyps}, ensure_ascii=False)


def _parse_record(path: Path, number: int, line: str) -> NBest:
    where = f"{path}: line {number}"
    try:
        obj = json.loads(line)
        rid = obj["id"]
        hyps = tuple(Hyp(str(h["text"]), float(h["score"])) for h in obj["hyps"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: not a shard record ({type(err).__name__}: {err})") from None
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise DataError(f"{where}: id {rid!r} is not an integer")
    if not hyps:
        raise DataError(f"{where}: id {rid}: no hypotheses")
    if any(math.isnan(h.score) for h in hyps):
        raise DataError(f"{where}: id {rid}: a hypothesis score is NaN")
    return NBest(rid, hyps)


def read_shard(path: str | os.PathLike) -> list[NBest]:
    """All records of a shard file, each checked for form (not for membership: see reassemble)."""
    path = Path(path)
    return [_parse_record(path, number, line) for number, line in enumerate(iter_lines(path), start=1)]


def check_shard(records: Sequence[NBest], expected_ids: Sequence[int], where: str, nbest: int | None = None) -> None:
    """A shard holds exactly its expected ids, in order, each with `nbest` hypotheses when given."""
    if len(records) != len(expected_ids):
        raise DataError(f"{where}: {len(records)} records, expected {len(expected_ids)}")
    for position, (record, expected) in enumerate(zip(records, expected_ids, strict=True)):
        if record.id != expected:
            raise DataError(f"{where}: record {position}: id {record.id}, expected id {expected}")
        if nbest is not None and len(record.hyps) != nbest:
            raise DataError(f"{where}: id {record.id}: {len(record.hyps)} hypotheses, expected {nbest}")


def write_shard(path: str | os.PathLike, records: Iterable[NBest], expected_ids: Sequence[int], nbest: int | None = None) -> None:
    """Write, read back and verify a temporary file, then rename it: a killed job leaves no shard."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # temporaries of an earlier, killed run
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(record_to_json(record))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        check_shard(read_shard(tmp), expected_ids, f"shard {path.name}", nbest)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shards from the rest of a group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shard_index_from_name(path: str | os.PathLike) -> tuple[int, int] | None:
    """(index, count) from a shard file name, or None when the name does not follow the pattern."""
    match = SHARD_FILE.search(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def reassemble(paths: Iterable[str | os.PathLike], expected_ids: Sequence[int], shards: int) -> list[NBest]:
    """One record per expected id, in the order of expected_ids, from shard files given in any order.

    Fails, naming the shard and the id, on a duplicated id, a foreign id (not a training id, or one
    that belongs to another shard), and on missing ids (naming the shard that should hold them).
    """
    n = len(expected_ids)
    position = {rid: pos for pos, rid in enumerate(expected_ids)}
    if len(position) != n:
        raise DataError("training ids repeat: reassembly by id is impossible")
    found: dict[int, NBest] = {}
    source: dict[int, str] = {}
    for path in paths:
        name = Path(path).name
        parsed = shard_index_from_name(path)
        if parsed is not None and parsed[1] != shards:
            raise DataError(f"shard {name}: made for {parsed[1]} shards, this run has {shards}")
        for record in read_shard(path):
            pos = position.get(record.id)
            if pos is None:
                raise DataError(f"shard {name}: foreign id {record.id}: not in the training ids")
            owner = shard_of_position(pos, n, shards)
            if parsed is not None and parsed[0] != owner:
                raise DataError(
                    f"shard {name}: foreign id {record.id}: it belongs to shard {shard_name(owner, shards)}"
                )
            if record.id in found:
                raise DataError(f"shard {name}: duplicated id {record.id} (also in shard {source[record.id]})")
            found[record.id] = record
            source[record.id] = name
    if len(found) != n:
        missing: dict[int, list[int]] = {}
        for pos, rid in enumerate(expected_ids):
            if rid not in found:
                missing.setdefault(shard_of_position(pos, n, shards), []).append(rid)
        parts = []
        for index, ids in sorted(missing.items()):
            start, end = shard_range(n, shards, index)
            parts.append(
                f"shard {shard_filename(index, shards)}: {len(ids)} of its {end - start} ids missing (first: id {ids[0]})"
            )
        raise DataError("; ".join(parts))
    return [found[rid] for rid in expected_ids]
