"""Training-set cleaning with a count for every filter. Dev and test never pass through here.

    python -m pipeline.clean --src-in A --tgt-in B --src-out C --tgt-out D --ids-out E --stats S.json \
        [--max-tokens 100] [--max-length-ratio 3] [--keep-identical] [--keep-duplicates]

A pair is counted under the first filter it fails, in the order of FILTERS. The ids file lists,
for each kept pair, its 0-based line number in the input, so later stages can trace any pair.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import run
from pipeline.corpus import read_parallel, write_lines

FILTERS = ("empty", "too_long", "length_ratio", "identical", "duplicate")
log = logging.getLogger("pipeline.clean")


@dataclass(frozen=True)
class CleanConfig:
    max_tokens: int = 100
    max_length_ratio: float = 3.0
    remove_identical: bool = True
    remove_duplicates: bool = True


def rejection(src: str, tgt: str, cfg: CleanConfig, seen: set[tuple[str, str]]) -> str | None:
    """The first filter that rejects the pair, or None to keep it."""
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if max(n_src, n_tgt) > cfg.max_tokens:
        return "too_long"
    if max(n_src, n_tgt) / min(n_src, n_tgt) > cfg.max_length_ratio:
        return "length_ratio"
    if cfg.remove_identical and src.strip() == tgt.strip():
        return "identical"
    if cfg.remove_duplicates:
        if (src, tgt) in seen:
            return "duplicate"
        seen.add((src, tgt))
    return None


def clean(src_lines: Sequence[str], tgt_lines: Sequence[str], cfg: CleanConfig) -> tuple[list[int], dict]:
    """Kept line ids and the statistics: input, kept, and how many each filter removed."""
    removed = dict.fromkeys(FILTERS, 0)
    kept: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i, (src, tgt) in enumerate(zip(src_lines, tgt_lines, strict=True)):
        reason = rejection(src, tgt, cfg, seen)
        if reason is None:
            kept.append(i)
        else:
            removed[reason] += 1
    stats = {"input": len(src_lines), "kept": len(kept), "removed": removed, "config": cfg.__dict__}
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
    src_lines, tgt_lines = read_parallel(args.src_in, args.tgt_in, "train")
    kept, stats = clean(src_lines, tgt_lines, cfg)
    write_lines(args.src_out, (src_lines[i] for i in kept))
    write_lines(args.tgt_out, (tgt_lines[i] for i in kept))
    write_lines(args.ids_out, (str(i) for i in kept))
    args.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log.info("kept %d of %d pairs; removed %s", stats["kept"], stats["input"], stats["removed"])


if __name__ == "__main__":
    run(main)
