"""The teacher-distribution cache on disk: its layout, what it was made for, and the reader.

Layout of a cache directory (one per training data directory)::

    DIR/cache.json                              index: format, K, shards per split, identity
    DIR/<split>/shard<NNN>-of-<SSS>/meta.json   the shard's sentence range, token count, identity
    DIR/<split>/shard<NNN>-of-<SSS>/offsets.npy int64 (n + 1,): sentence i's tokens are rows offsets[i]:offsets[i+1]
    DIR/<split>/shard<NNN>-of-<SSS>/index.npy   int16 (int32 for vocabularies over 32767) (tokens, K): token ids
    DIR/<split>/shard<NNN>-of-<SSS>/logprob.npy float16 (tokens, K): the teacher's log-probabilities at T = 1

`<split>` is fairseq's split name (train, valid); a shard holds the sentences [start, end) of the split's
fairseq dataset (pipeline.distill.shards.shard_range), indexed by the dataset's sample id; its rows are
every target token of each sentence, EOS included, in order. Per row the K most probable tokens are
sorted by decreasing probability (so any K' <= K is the first K' columns). Log-probabilities, not
probabilities: the criterion's distribution at temperature T is softmax(logprob / T) over the kept
tokens, exactly what the online `--kd-topk` path computes from the teacher's logits (log-probabilities
are the logits shifted by a per-row constant, which the softmax cancels). An ensemble's cache holds the
log of its members' average probability at T = 1, which is the online ensemble's top-K at T = 1 only:
at another T the members' probabilities are averaged after scaling, so the criterion refuses it there.

A shard is written into a temporary directory and renamed: a shard directory exists only complete.
The identity (teacher checkpoint or the ensemble's, dictionaries, the split's binarised files) is recorded in every
shard and in cache.json; :func:`check_identity` names whatever differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.distill.shards import shard_name, shard_range
from pipeline.errors import DataError
from pipeline.streaming import publish_dir

FORMAT = "kdcache-1"
INDEX_FILE = "cache.json"
META_FILE = "meta.json"
VALUE_KIND = "log-probabilities at temperature 1, top-K per token, sorted by decreasing probability"
HASH_LIMIT = 256 * 2**20  # bigger files are identified by size and modification time (as pipeline.train does)


class StaleCacheError(DataError):
    """A teacher cache made for another teacher, dictionary or training data (or an unfinished one)."""


# ---------------------------------------------------------------------------------------------------
# Identity: what a cache was made for


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """{'size', 'sha256'} of a file ({'size', 'mtime_ns'} above HASH_LIMIT)."""
    path = Path(path)
    try:
        stat = path.stat()
        if stat.st_size > HASH_LIMIT:
            return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return {"size": stat.st_size, "sha256": h.hexdigest()}


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The binarised files fairseq's translation task reads for a split: <split>[N].<a>-<b>.<lang>.{bin,idx}."""
    data_dir = Path(data_dir)
    found = []
    for p in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        head, _, rest = p.name.partition(".")
        if head == split or (head.startswith(split) and head[len(split):].isdigit()):
            parts = rest.split(".")
            if len(parts) == 3 and "-" in parts[0] and parts[2] in ("bin", "idx"):
                found.append(p)
    return found


Teachers = str | os.PathLike | Sequence[str | os.PathLike]  # one checkpoint, or an ensemble's members


def teacher_identity(teacher: Teachers) -> dict[str, Any]:
    """{'path', 'size', 'sha256'} of one checkpoint; {'members': [those of each]} of an ensemble."""
    paths = [teacher] if isinstance(teacher, (str, os.PathLike)) else list(teacher)
    members = [{"path": str(Path(p).resolve()), **file_identity(p)} for p in paths]
    return members[0] if len(members) == 1 else {"members": members}


def identity(teacher: Teachers, data_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """What a cache of `split` is valid for: the teacher checkpoint(s), the dictionaries, the split's files."""
    data_dir = Path(data_dir)
    files = split_files(data_dir, split)
    if not files:
        raise DataError(f"{data_dir}: no binarised files of split '{split}' ({split}.<src>-<tgt>.<lang>.bin/.idx)")
    dicts = sorted(data_dir.glob("dict.*.txt"))
    return {
        "teacher": teacher_identity(teacher),
        "dictionaries": {p.name: file_identity(p) for p in dicts},
        "targets": {p.name: file_identity(p) for p in files},
    }


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        if "sha256" in value:
            return f"sha256 {value['sha256'][:12]}, {value['size']} bytes"
        if "mtime_ns" in value:
            return f"{value['size']} bytes, mtime {value['mtime_ns']}"
    if isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}"
    return "absent" if value is None else str(value)


def _without_paths(teacher: dict[str, Any]) -> Any:
    if "members" in teacher:
        return [_without_paths(m) for m in teacher["members"]]
    return {k: v for k, v in teacher.items() if k != "path"}


def _describe_teacher(teacher: dict[str, Any]) -> str:
    if "members" in teacher:
        return "the ensemble " + " + ".join(_describe_teacher(m) for m in teacher["members"])
    return f"{teacher.get('path')} ({_describe(_without_paths(teacher))})"


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words (the teachers' paths are informative only)."""
    out = []
    old_t, new_t = recorded.get("teacher", {}), current["teacher"]
    if _without_paths(old_t) != _without_paths(new_t):
        out.append(f"teacher checkpoint {_describe_teacher(new_t)} is not the one the cache was made "
                   f"with ({_describe_teacher(old_t)})")
    for key, what in (("dictionaries", "dictionary"), ("targets", "training data file")):
        old, new = recorded.get(key, {}), current[key]
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                out.append(f"{what} {name}: now {_describe(new.get(name))}, cache made for {_describe(old.get(name))}")
    return out


# ---------------------------------------------------------------------------------------------------
# Shards


def shard_dirname(index: int, shards: int) -> str:
    return f"shard{shard_name(index, shards)}-of-{shard_name(shards, shards)}"


def shard_path(cache_dir: str | os.PathLike, split: str, index: int, shards: int) -> Path:
    return Path(cache_dir) / split / shard_dirname(index, shards)


def id_dtype(vocab: int) -> np.dtype:
    return np.dtype(np.int16) if vocab <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def write_shard(path: str | os.PathLike, *, lengths: Sequence[int], index: np.ndarray, logprob: np.ndarray,
                meta: dict[str, Any]) -> None:
    """Write a shard's arrays and meta.json into a temporary directory, check them, and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # temporaries of a killed run
        shutil.rmtree(stale, ignore_errors=True)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    if index.shape != logprob.shape or index.shape[0] != offsets[-1]:
        raise ValueError(f"shard {path}: {index.shape} ids, {logprob.shape} values, {offsets[-1]} tokens")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "index.npy", index)
        np.save(tmp / "logprob.npy", logprob)
        meta = {**meta, "format": FORMAT, "sentences": len(lengths), "tokens": int(offsets[-1]),
                "topk": int(index.shape[1]), "index_dtype": str(index.dtype), "value_dtype": str(logprob.dtype),
                "values": VALUE_KIND}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        read_shard(tmp)  # reads back what was written
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Shard:
    path: Path
    meta: dict[str, Any]
    offsets: np.ndarray
    index: np.ndarray
    logprob: np.ndarray

    @property
    def start(self) -> int:
        return int(self.meta["start"])

    @property
    def end(self) -> int:
        return int(self.meta["end"])


def read_shard(path: str | os.PathLike) -> Shard:
    """A shard, its arrays memory-mapped, checked for form (sizes, dtypes, offsets)."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        offsets = np.load(path / "offsets.npy", mmap_mode="r")
        index = np.load(path / "index.npy", mmap_mode="r")
        logprob = np.load(path / "logprob.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        raise StaleCacheError(f"{path}: not a complete teacher-cache shard ({type(err).__name__}: {err})") from None
    if meta.get("format") != FORMAT:
        raise StaleCacheError(f"{path}/{META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    n = meta["end"] - meta["start"]
    problems = []
    if offsets.shape != (n + 1,) or (n >= 0 and offsets[-1] != meta["tokens"]):
        problems.append(f"offsets.npy has shape {offsets.shape} for {n} sentences")
    if index.shape != (meta["tokens"], meta["topk"]) or logprob.shape != index.shape:
        problems.append(f"index.npy {index.shape} / logprob.npy {logprob.shape}, expected ({meta['tokens']}, {meta['topk']})")
    if str(index.dtype) != meta["index_dtype"] or logprob.dtype != np.float16:
        problems.append(f"dtypes {index.dtype} / {logprob.dtype}")
    if problems:
        raise StaleCacheError(f"{path}: damaged teacher-cache shard: {'; '.join(problems)}")
    return Shard(path, meta, offsets, index, logprob)


def shard_is_current(path: Path, expected: dict[str, Any]) -> tuple[bool, str]:
    """(True, '') when a finished shard at `path` has the expected meta entries; else (False, why)."""
    if not path.is_dir():
        return False, "missing"
    try:
        meta = read_shard(path).meta
    except StaleCacheError as err:
        return False, str(err)
    for key, value in expected.items():
        if key == "identity":
            diff = identity_differences(meta.get("identity", {}), value)
            if diff:
                return False, "; ".join(diff)
        elif meta.get(key) != value:
            return False, f"{key} {meta.get(key)!r}, expected {value!r}"
    return True, ""


# ---------------------------------------------------------------------------------------------------
# The index and the reader


def write_index(cache_dir: str | os.PathLike, splits: dict[str, int], shards: int, teacher: Teachers,
                data_dir: str | os.PathLike) -> dict[str, Any]:
    """Check every shard of each split against the current files and write cache.json (atomically).

    `splits`: split name -> its number of sentences. A missing, unfinished or stale shard is an error
    naming it and what differs: the rule-level guard against a stale cache.
    """
    cache_dir = Path(cache_dir)
    index: dict[str, Any] = {"format": FORMAT, "shards": shards, "splits": {}}
    topk = vocab = None
    for split, n in splits.items():
        current = identity(teacher, data_dir, split)
        tokens = 0
        for i in range(shards):
            path = shard_path(cache_dir, split, i, shards)
            start, end = shard_range(n, shards, i)
            ok, why = shard_is_current(path, {"split": split, "start": start, "end": end, "identity": current})
            if not ok:
                raise StaleCacheError(f"teacher cache {path}: {why}; rebuild it (python -m pipeline.kdcache build)")
            meta = read_shard(path).meta
            if topk is not None and (meta["topk"], meta["vocab"]) != (topk, vocab):
                raise StaleCacheError(f"teacher cache {path}: top-{meta['topk']} over {meta['vocab']} entries, "
                                      f"other shards top-{topk} over {vocab}")
            topk, vocab = meta["topk"], meta["vocab"]
            tokens += meta["tokens"]
        index["splits"][split] = {"sentences": n, "tokens": tokens, "identity": current}
    index.update({"topk": topk, "vocab": vocab, "values": VALUE_KIND})
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{INDEX_FILE}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=1) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, cache_dir / INDEX_FILE)
    return index


class TeacherCache:
    """Read a cache directory: the top-K (ids, log-probabilities) of given sentences of a split.

    Opening checks cache.json and every shard's form; :meth:`check` compares the recorded identity with
    the current teacher, dictionaries and data files.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.dir = Path(cache_dir)
        index_file = self.dir / INDEX_FILE
        try:
            self.index = json.loads(index_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StaleCacheError(f"teacher cache {self.dir}: no {INDEX_FILE} (unfinished or not a cache: "
                                  "build it with python -m pipeline.kdcache build)") from None
        except (OSError, json.JSONDecodeError) as err:
            raise StaleCacheError(f"{index_file}: unreadable ({err})") from None
        if self.index.get("format") != FORMAT:
            raise StaleCacheError(f"{index_file}: format {self.index.get('format')!r}, expected {FORMAT!r}")
        self.topk, self.vocab, self.shards = self.index["topk"], self.index["vocab"], self.index["shards"]
        self._splits: dict[str, tuple[np.ndarray, list[Shard]]] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.index["splits"])

    def check(self, teacher: Teachers, data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> None:
        """Raise StaleCacheError naming every difference between the cache's identity and the current files."""
        problems = []
        for split in splits or self.splits:
            if split not in self.index["splits"]:
                problems.append(f"no split '{split}' (it has {', '.join(self.splits)})")
                continue
            diff = identity_differences(self.index["splits"][split]["identity"], identity(teacher, data_dir, split))
            problems += [f"{split}: {d}" for d in diff]
        if problems:
            raise StaleCacheError(f"teacher cache {self.dir} does not fit this run: {'; '.join(problems)}; "
                                  "rebuild it (python -m pipeline.kdcache build) or train without --kd-teacher-cache")

    def _open(self, split: str) -> tuple[np.ndarray, list[Shard]]:
        if split not in self._splits:
            if split not in self.index["splits"]:
                raise StaleCacheError(f"teacher cache {self.dir}: no split '{split}' (it has {', '.join(self.splits)})")
            n = self.index["splits"][split]["sentences"]
            shards = [read_shard(shard_path(self.dir, split, i, self.shards)) for i in range(self.shards)]
            for i, shard in enumerate(shards):
                if (shard.start, shard.end) != shard_range(n, self.shards, i):
                    raise StaleCacheError(f"{shard.path}: sentences {shard.start}..{shard.end}, expected "
                                          f"{shard_range(n, self.shards, i)} of {n}")
            starts = np.array([s.start for s in shards], dtype=np.int64)
            self._splits[split] = (starts, shards)
        return self._splits[split]

    def lengths(self, split: str, ids: np.ndarray) -> np.ndarray:
        """Target tokens (EOS included) of each sentence id."""
        starts, shards = self._open(split)
        out = np.empty(len(ids), dtype=np.int64)
        which = np.searchsorted(starts, ids, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            local = ids[sel] - shards[s].start
            out[sel] = shards[s].offsets[local + 1] - shards[s].offsets[local]
        return out

    def lookup(self, split: str, ids: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index (tokens, topk) int64, logprob (tokens, topk) float16, lengths) of the sentences `ids`, concatenated in order."""
        starts, shards = self._open(split)
        ids = np.asarray(ids, dtype=np.int64)
        n = self.index["splits"][split]["sentences"]
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise StaleCacheError(f"teacher cache {self.dir}: sample id {int(ids.max())} outside split '{split}' "
                                  f"({n} sentences)")
        which = np.searchsorted(starts, ids, side="right") - 1
        lengths = np.empty(len(ids), dtype=np.int64)
        begin = np.empty(len(ids), dtype=np.int64)
        for s in np.unique(which):
            sel = which == s
            local = ids[sel] - shards[s].start
            begin[sel] = shards[s].offsets[local]
            lengths[sel] = shards[s].offsets[local + 1] - begin[sel]
        total = int(lengths.sum())
        index = np.empty((total, topk), dtype=np.int64)
        logprob = np.empty((total, topk), dtype=np.float16)
        row_shard = np.repeat(which, lengths)
        # rows of each sentence: begin[i] + 0..lengths[i]-1
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(begin, lengths) + (np.arange(total) - first)
        for s in np.unique(which):
            sel = row_shard == s
            index[sel] = shards[s].index[rows[sel], :topk]
            logprob[sel] = shards[s].logprob[rows[sel], :topk]
        return index, logprob, lengths
