"""Training-set cleaning with a count for every filter. Dev and test never pass through here.

    python -m pipeline.clean --src-in A --tgt-in B --src-out C --tgt-out D --ids-out E --stats S.json \
        [--max-tokens 100] [--max-length-ratio 3] [--keep-identical] [--keep-duplicates]

A pair is counted under the first filter it fails, in the order of PAIR_FILTERS. The ids file lists,
for each kept pair, its 0-based line number in the input, so later stages can trace any pair.

The corpus is streamed in chunks, twice: memory holds a chunk, never the corpus. Duplicates are
found by a 64-bit BLAKE2b digest of the pair, not by the strings: two different pairs with the same
digest would be merged, which for n distinct pairs happens with expected count n(n-1)/2^65 (about 7e-5
for 50 million pairs). The statistics record the hash width, the number of distinct pairs and that
expected count. The digests never sit in memory together: the first pass appends each candidate's
(digest, ordinal) to one of DEDUP_PARTITIONS files by digest (16 bytes per pair in the temporary
directory, TMPDIR or --tmp-dir: 800 MB for 50M pairs), each file is then sorted on its own (a
partition: 1/256 of the pairs) to mark every later occurrence of a digest, and the second pass writes
the pairs whose mark is clear. What stays in memory for the whole run is that mark, one bit per pair
that passed the filters (6 MB for 50 million).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import run
from pipeline.errors import DataError
from pipeline.streaming import AtomicOutputs, chunks, iter_parallel

PAIR_FILTERS = ("empty", "too_long", "length_ratio", "identical", "duplicate")
HASH_BITS = 64
CHUNK_PAIRS = 10_000
DEDUP_PARTITIONS = 256  # a partition holds 1/256 of the digests while it is sorted
log = logging.getLogger("pipeline.clean")


@dataclass(frozen=True)
class CleanConfig:
    max_tokens: int = 100
    max_length_ratio: float = 3.0
    remove_identical: bool = True
    remove_duplicates: bool = True


def pair_rejection(src: str, tgt: str, cfg: CleanConfig) -> str | None:
    """The first filter before deduplication that rejects the pair, or None."""
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if max(n_src, n_tgt) > cfg.max_tokens:
        return "too_long"
    if max(n_src, n_tgt) / min(n_src, n_tgt) > cfg.max_length_ratio:
        return "length_ratio"
    if cfg.remove_identical and src.strip() == tgt.strip():
        return "identical"
    return None


def pair_digest(src: str, tgt: str) -> bytes:
    """8 bytes identifying the exact (source, target) pair (lines never contain a newline)."""
    return hashlib.blake2b(f"{src}\n{tgt}".encode(), digest_size=HASH_BITS // 8).digest()


class PartitionedDedup:
    """Later occurrences among a stream of 64-bit digests, found on disk: memory is one partition's
    digests while it is sorted, and one bit per digest for the result.

    add() the digests in stream order, then duplicates() finds the ordinals that repeat an earlier digest
    (a bit mask: bit i of byte i // 8, least significant first), and later(start, count) reads that mask
    for the ordinals start .. start + count - 1."""

    def __init__(self, tmp_dir: Path, partitions: int = DEDUP_PARTITIONS) -> None:
        self.partitions = partitions
        self.paths = [tmp_dir / f"{p:04d}.bin" for p in range(partitions)]
        self._files = [path.open("wb") for path in self.paths]
        self.n = 0
        self.distinct = 0
        self.repeated = np.zeros(0, dtype=np.uint8)

    def add(self, digests: np.ndarray) -> None:
        ordinals = np.arange(self.n, self.n + len(digests), dtype="<u8")
        self.n += len(digests)
        part = (digests % np.uint64(self.partitions)).astype(np.intp)
        order = np.argsort(part, kind="stable")  # stable: each partition's records stay in stream order
        records = np.stack([digests, ordinals], axis=1)[order]
        bounds = np.searchsorted(part[order], np.arange(self.partitions + 1))
        for p in np.flatnonzero(np.diff(bounds)):
            self._files[p].write(records[bounds[p]:bounds[p + 1]].tobytes())

    def duplicates(self) -> np.ndarray:
        for f in self._files:
            f.close()
        repeated = np.zeros((self.n + 7) // 8, dtype=np.uint8)
        for path in self.paths:
            records = np.fromfile(path, dtype="<u8").reshape(-1, 2)
            path.unlink()
            if not len(records):
                continue
            records = records[np.lexsort((records[:, 1], records[:, 0]))]  # by digest, then stream order
            later = np.flatnonzero(records[1:, 0] == records[:-1, 0]) + 1
            self.distinct += len(records) - len(later)
            ordinals = records[later, 1]
            np.bitwise_or.at(repeated, ordinals >> np.uint64(3), np.left_shift(1, ordinals & np.uint64(7)).astype(np.uint8))
        self.repeated = repeated
        return repeated

    def later(self, start: int, count: int) -> np.ndarray:
        """Whether each of the ordinals start .. start + count - 1 repeats an earlier digest (after duplicates())."""
        ordinals = np.arange(start, start + count, dtype=np.int64)
        return ((self.repeated[ordinals >> 3] >> (ordinals & 7).astype(np.uint8)) & 1).astype(bool)


def _changed(first: int, second: int, bound: str = "") -> None:
    raise DataError(f"the training corpus changed while it was being cleaned: {first} pairs passed the "
                    f"filters in the first reading, {bound}{second} in the second")


def clean_pairs(open_pairs: Callable[[], Iterable[tuple[str, str]]], cfg: CleanConfig, stats: dict,
                tmp_dir: Path | None = None) -> Iterator[tuple[int, str, str]]:
    """(input line number, source, target) of every kept pair, streamed; fills stats when exhausted.

    open_pairs() gives the corpus from its start: deduplication reads it twice (see the module's text);
    the partition files go to a temporary directory in tmp_dir (default: TMPDIR), removed at the end."""
    removed = dict.fromkeys(PAIR_FILTERS, 0)
    dedup = None
    if cfg.remove_duplicates:
        with tempfile.TemporaryDirectory(prefix="pipeline-clean-", dir=tmp_dir) as tmp:
            dedup = PartitionedDedup(Path(tmp))
            for chunk in chunks(open_pairs(), CHUNK_PAIRS):
                digests = [pair_digest(src, tgt) for src, tgt in chunk if pair_rejection(src, tgt, cfg) is None]
                if digests:
                    dedup.add(np.frombuffer(b"".join(digests), dtype="<u8"))
            dedup.duplicates()
    n_in = n_kept = n_candidates = 0
    for chunk in chunks(enumerate(open_pairs()), CHUNK_PAIRS):
        n_in += len(chunk)
        candidates = []
        for i, (src, tgt) in chunk:
            reason = pair_rejection(src, tgt, cfg)
            if reason is None:
                candidates.append((i, src, tgt))
            else:
                removed[reason] += 1
        if dedup is not None and candidates:
            if n_candidates + len(candidates) > dedup.n:
                _changed(dedup.n, n_candidates + len(candidates), "at least ")
            later = dedup.later(n_candidates, len(candidates))
            n_candidates += len(candidates)
            removed["duplicate"] += int(later.sum())
            candidates = [c for c, drop in zip(candidates, later.tolist(), strict=True) if not drop]
        n_kept += len(candidates)
        yield from candidates
    if dedup is not None and n_candidates != dedup.n:
        _changed(dedup.n, n_candidates)
    m = dedup.distinct if dedup is not None else 0
    stats.update({
        "input": n_in,
        "kept": n_kept,
        "removed": removed,
        "config": cfg.__dict__,
        "dedup": {
            "key": f"blake2b {HASH_BITS}-bit digest of the exact (source, target) pair",
            "hash_bits": HASH_BITS,
            "distinct_pairs": m,
            # two distinct pairs sharing a digest are merged: the expected number of such merges
            "expected_false_merges": m * (m - 1) / 2 ** (HASH_BITS + 1),
        } if cfg.remove_duplicates else None,
    })


def clean(src_lines: Sequence[str], tgt_lines: Sequence[str], cfg: CleanConfig) -> tuple[list[int], dict]:
    """Kept line ids and the statistics: input, kept, and how many each filter removed."""
    stats: dict = {}
    kept = [i for i, _, _ in clean_pairs(lambda: zip(src_lines, tgt_lines, strict=True), cfg, stats)]
    return kept, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("src-in", "tgt-in", "src-out", "tgt-out", "ids-out", "stats"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=CleanConfig.max_tokens)
    parser.add_argument("--max-length-ratio", type=float, default=CleanConfig.max_length_ratio)
    parser.add_argument("--keep-identical", action="store_true")
    parser.add_argument("--keep-duplicates", action="store_true")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="where deduplication's partition files go (16 bytes per pair; default: TMPDIR)")
    args = parser.parse_args()
    cfg = CleanConfig(args.max_tokens, args.max_length_ratio, not args.keep_identical, not args.keep_duplicates)
    stats: dict = {}
    with AtomicOutputs(args.src_out, args.tgt_out, args.ids_out) as (src_out, tgt_out, ids_out):
        for i, src, tgt in clean_pairs(lambda: iter_parallel(args.src_in, args.tgt_in, "train"), cfg, stats,
                                          args.tmp_dir):
            src_out.write(f"{src}\n")
            tgt_out.write(f"{tgt}\n")
            ids_out.write(f"{i}\n")
    args.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log.info("kept %d of %d pairs; removed %s", stats["kept"], stats["input"], stats["removed"])


if __name__ == "__main__":
    run(main)
