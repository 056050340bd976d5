"""Training-set cleaning with a count for every filter. Dev and test never pass through here.

    python -m pipeline.clean --src-in A --tgt-in B --src-out C --tgt-out D --ids-out E --stats S.json \
        [--max-tokens 100] [--max-length-ratio 3] [--keep-identical] [--keep-duplicates]

A pair is counted under the first filter it fails, in the order of PAIR_FILTERS. The ids file lists,
for each kept pair, its 0-based line number in the input, so later stages can trace any pair.

The corpus is streamed in chunks: memory does not hold the corpus, only a chunk and the
deduplication digests. Duplicates are found by a 64-bit BLAKE2b digest of the pair (8 bytes per
distinct pair, in sorted numpy runs), not by the strings: two different pairs with the same digest
would be merged, which for n distinct pairs happens with expected count n(n-1)/2^65 (about 7e-5 for
50 million pairs). The statistics record the hash width, the number of distinct pairs and that
expected count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import run
from pipeline.streaming import AtomicOutputs, chunks, iter_parallel

PAIR_FILTERS = ("empty", "too_long", "length_ratio", "identical", "duplicate")
HASH_BITS = 64
CHUNK_PAIRS = 10_000
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


class DigestSet:
    """Distinct 64-bit digests in sorted numpy runs of geometrically growing size (8 bytes each)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.size = 0

    def _seen(self, digests: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(digests), dtype=bool)
        for sorted_run in self.runs:
            pos = np.searchsorted(sorted_run, digests)
            pos[pos == len(sorted_run)] = 0
            seen |= sorted_run[pos] == digests
        return seen

    def add_new(self, digests: np.ndarray) -> np.ndarray:
        """Mask of the digests not seen before, in order; a digest repeated in the batch is new once (first)."""
        new = ~self._seen(digests) if self.runs else np.ones(len(digests), dtype=bool)
        _, first = np.unique(digests, return_index=True)
        first_mask = np.zeros(len(digests), dtype=bool)
        first_mask[first] = True
        new &= first_mask
        if new.any():
            self.runs.append(np.sort(digests[new]))
            self.size += int(new.sum())
            while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
                last = self.runs.pop()
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))
        return new


def clean_pairs(pairs: Iterable[tuple[str, str]], cfg: CleanConfig, stats: dict) -> Iterator[tuple[int, str, str]]:
    """(input line number, source, target) of every kept pair, streamed; fills stats when exhausted."""
    removed = dict.fromkeys(PAIR_FILTERS, 0)
    digests = DigestSet()
    n_in = n_kept = 0
    for chunk in chunks(enumerate(pairs), CHUNK_PAIRS):
        n_in += len(chunk)
        candidates = []
        for i, (src, tgt) in chunk:
            reason = pair_rejection(src, tgt, cfg)
            if reason is None:
                candidates.append((i, src, tgt))
            else:
                removed[reason] += 1
        if cfg.remove_duplicates and candidates:
            keys = np.frombuffer(b"".join(pair_digest(s, t) for _, s, t in candidates), dtype="<u8")
            new = digests.add_new(keys)
            removed["duplicate"] += int((~new).sum())
            candidates = [c for c, keep in zip(candidates, new.tolist(), strict=True) if keep]
        n_kept += len(candidates)
        yield from candidates
    m = digests.size
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
    kept = [i for i, _, _ in clean_pairs(zip(src_lines, tgt_lines, strict=True), cfg, stats)]
    return kept, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("src-in", "tgt-in", "src-out", "tgt-out", "ids-out", "stats"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=CleanConfig.max_tokens)
    parser.add_argument("--max-length-ratio", type=float, default=CleanConfig.max_length_ratio)
    parser.add_argument("--keep-identical", action="store_true")
    parser.add_argument("--keep-duplicates", action="store_true")
    args = parser.parse_args()
    cfg = CleanConfig(args.max_tokens, args.max_length_ratio, not args.keep_identical, not args.keep_duplicates)
    stats: dict = {}
    with AtomicOutputs(args.src_out, args.tgt_out, args.ids_out) as (src_out, tgt_out, ids_out):
        for i, src, tgt in clean_pairs(iter_parallel(args.src_in, args.tgt_in, "train"), cfg, stats):
            src_out.write(f"{src}\n")
            tgt_out.write(f"{tgt}\n")
            ids_out.write(f"{i}\n")
    args.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log.info("kept %d of %d pairs; removed %s", stats["kept"], stats["input"], stats["removed"])


if __name__ == "__main__":
    run(main)
