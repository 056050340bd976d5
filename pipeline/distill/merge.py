"""Merge the post-processed shards into the distilled corpus: concatenation in id order, exact statistics.

    python -m pipeline.distill.merge --index work/data/<dir>/distill_index-<shard_size>.json [--num-shards 8] \
        --parts work/distill/<dir>/post/shard000-of-008 ... work/distill/<dir>/post/shard007-of-008 \
        --out-src work/distill/<dir>/train.de --out-tgt work/distill/<dir>/train.en --out-ids work/distill/<dir>/train.ids \
        --text-src work/distill/<dir>/train.de.txt --text-tgt work/distill/<dir>/train.en.txt \
        --stats work/distill/<dir>/stats.json [--max-fallback-share 0.2] [--fail-fallback-share 0.9]

Each part is a directory written by pipeline.distill.postprocess. The merge checks that every shard
of the run is there exactly once, made with the same selection and filters, and that each part
holds its own shard's ids in training order (a missing, duplicated or foreign id fails naming the
shard and the id, as reassembly does); then it streams the parts, in blocks of bytes, into the five
outputs (written together and renamed only when complete: a killed merge leaves none of them).
The statistics are the sum of the shards' (sacreBLEU sufficient statistics included): the same JSON
as pipeline.distill.assemble's, plus the fallback share (pipeline.distill.fallback).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.cli import run
from pipeline.distill.fallback import FAIL_SHARE, WARN_SHARE, check_fallback
from pipeline.distill.filters import FilterConfig
from pipeline.distill.postprocess import FORMAT, PART_FILES, STATS_FILE
from pipeline.distill.shard_index import ShardIndex
from pipeline.distill.shards import shard_filename, shard_name
from pipeline.distill.stats import DistillStats
from pipeline.errors import DataError
from pipeline.streaming import AtomicOutputs, copy_lines

log = logging.getLogger("pipeline.distill.merge")


def read_part(part: Path) -> dict:
    path = part / STATS_FILE
    if not path.is_file():
        raise DataError(f"{part}: not a post-processed shard (no {STATS_FILE}: pipeline.distill.postprocess)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        meta["stats"] = DistillStats.from_json(meta["stats"])
        meta["filter_config"] = FilterConfig(**meta["filter_config"])
        int(meta["shard"]), int(meta["shards"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a shard's statistics ({type(err).__name__}: {err})") from None
    return meta


def plan(parts: list[Path], index: ShardIndex) -> list[tuple[Path, dict]]:
    """The parts in shard order, each checked for its shard and settings; every shard exactly once."""
    shards = index.shards
    by_shard: dict[int, tuple[Path, dict]] = {}
    for part in parts:
        meta = read_part(part)
        if meta["shards"] != shards:
            raise DataError(f"shard {part.name}: made for {meta['shards']} shards, this run has {shards}")
        k = meta["shard"]
        if k in by_shard:
            raise DataError(f"shard {shard_filename(k, shards)}: given twice ({by_shard[k][0]} and {part})")
        if list(meta["positions"]) != list(index.range(k)):
            raise DataError(f"shard {part.name}: positions {meta['positions']}, the index says {list(index.range(k))}")
        by_shard[k] = (part, meta)
    missing = [k for k in range(shards) if k not in by_shard]
    if missing:
        raise DataError("; ".join(f"shard {shard_filename(k, shards)}: no post-processed part" for k in missing))
    first = by_shard[0][1]
    for k in range(1, shards):
        part, meta = by_shard[k]
        for key in ("selection", "metric", "filter_config"):
            if meta[key] != first[key]:
                raise DataError(f"shard {part.name}: {key} {meta[key]}, but shard {by_shard[0][0].name} has {first[key]}")
    return [by_shard[k] for k in range(shards)]


def check_part_ids(part: Path, k: int, meta: dict, index: ShardIndex) -> None:
    """The part's ids are its shard's ids, in training order: all of them, or all but the dropped pairs."""
    shards = index.shards
    name = shard_filename(k, shards)
    expected = index.ids(k)
    position = {rid: pos for pos, rid in enumerate(expected)}
    stats: DistillStats = meta["stats"]
    seen = 0
    last = -1
    path = part / "ids"
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                rid = int(line)
            except ValueError:
                raise DataError(f"{path}: line {number}: not an integer id: {line.rstrip()!r}") from None
            pos = position.get(rid)
            if pos is None:
                owner = index.owner(rid)
                if owner is None:
                    raise DataError(f"shard {name}: foreign id {rid}: not in the training ids")
                raise DataError(f"shard {name}: foreign id {rid}: it belongs to shard {shard_name(owner, shards)}")
            if pos <= last:
                if pos == last:
                    raise DataError(f"shard {name}: duplicated id {rid} (also in shard {name})")
                raise DataError(f"{path}: line {number}: id {rid} out of training order")
            last = pos
            seen += 1
    n = len(expected)
    if stats.pairs_in != n:
        raise DataError(f"shard {name}: its statistics count {stats.pairs_in} pairs in, but the shard has {n} ids")
    if seen < stats.pairs_out:  # (with drop, the dropped ids are absent by design and counted in the statistics)
        with path.open(encoding="utf-8") as f:  # only on this error path: which ids are missing
            written = {int(line) for line in f}
        first = next(rid for rid in expected if rid not in written)
        raise DataError(f"shard {name}: {stats.pairs_out - seen} of its {n} ids missing (first: id {first})")
    if seen > stats.pairs_out:
        raise DataError(f"shard {name}: {seen} ids, but its statistics count {stats.pairs_out} pairs kept")


def merge(parts: list[Path], index: ShardIndex, outputs: list[Path], stats_path: Path,
          warn_share: float = WARN_SHARE, fail_share: float = FAIL_SHARE) -> dict:
    """Check, combine the statistics (fallback check included), then stream every part into the outputs."""
    planned = plan(parts, index)
    total = DistillStats()
    for k, (part, meta) in enumerate(planned):
        check_part_ids(part, k, meta, index)
        total.merge(meta["stats"])
    first = planned[0][1]
    stats = total.final(first["selection"], first["metric"], first["filter_config"])
    stats["shards"] = index.shards
    check_fallback(stats, warn_share, fail_share)  # an error here: nothing written
    with AtomicOutputs(*outputs, stats_path) as files:
        *outs, stats_out = files
        for k, (part, meta) in enumerate(planned):
            expected = meta["stats"].pairs_out
            for name, out in zip(PART_FILES, outs, strict=True):
                n, complete = copy_lines(part / name, out.buffer)
                if n != expected or not complete:
                    raise DataError(f"{part / name}: {n} complete lines, but shard {shard_filename(k, index.shards)}"
                                    f" has {expected} pairs")
        stats_out.write(json.dumps(stats, indent=2) + "\n")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--num-shards", type=int, default=None, help="checked against the index (default: the index's count)")
    parser.add_argument("--parts", type=Path, nargs="+", required=True, help="the post-processed shards' directories")
    for name in ("out-src", "out-tgt", "out-ids", "text-src", "text-tgt", "stats"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--max-fallback-share", type=float, default=WARN_SHARE,
                        help="warn when more pairs than this share fall back to the reference or are dropped")
    parser.add_argument("--fail-fallback-share", type=float, default=FAIL_SHARE, help="fail above this share")
    args = parser.parse_args()
    index = ShardIndex.load(args.index)
    if args.num_shards is not None:
        index.check_count(args.num_shards)
    if len(args.parts) != index.shards:
        raise DataError(f"{len(args.parts)} parts given, but {args.index} has {index.shards} shards")
    # outputs in PART_FILES order: src.spm, tgt.spm, ids, src.txt, tgt.txt
    outputs = [args.out_src, args.out_tgt, args.out_ids, args.text_src, args.text_tgt]
    stats = merge(args.parts, index, outputs, args.stats, args.max_fallback_share, args.fail_fallback_share)
    log.info("distilled %d of %d pairs from %d shards; filtered %s; BLEU %s; fallback share %s", stats["pairs_out"],
             stats["pairs_in"], index.shards, stats["filtered"], stats["distilled_vs_reference"]["bleu"],
             stats["fallback_share"])


if __name__ == "__main__":
    run(main)
