"""Post-process one decoded shard: target selection, filters and the shard's statistics, in the shard job.

    python -m pipeline.distill.postprocess --shard work/distill/<dir>/shards/shard001-of-008.jsonl \
        --shard-id 1 --num-shards 8 --index work/data/<dir>/distill_index-<shard_size>.json --spm-model work/data/<dir>/spm/spm.model \
        --out-dir work/distill/<dir>/post/shard001-of-008 \
        [--selection top1|seq_inter] [--metric chrf|bleu] [--min-length-ratio 0.333] [--max-length-ratio 3]
        [--max-repeat 4] [--max-repeat-ngram 4] [--on-filtered reference|drop]

The shard's range of the cleaned corpus (ids, SentencePiece source and reference, text source and
reference) is read through the shard index (pipeline.distill.shard_index): only this shard's lines.
The shard file is checked as reassembly checks it (a missing, duplicated or foreign id fails naming
the shard and the id; records may come in any order) and its pairs are processed in training order,
exactly as pipeline.distill.assemble processes them.

OUT_DIR holds the shard's part of the distilled corpus (src.spm, tgt.spm, ids, src.txt, tgt.txt) and
stats.json (counts and sacreBLEU sufficient statistics: pipeline.distill.stats). It is built in a
temporary directory and renamed when complete: a killed job leaves no OUT_DIR, and its rerun removes
the temporaries. pipeline.distill.merge concatenates the shards' parts.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from pipeline import spm
from pipeline.cli import run
from pipeline.distill.filters import ON_FILTERED, FilterConfig, hypothesis_rejection
from pipeline.distill.selection import METRICS, SELECTIONS, selector
from pipeline.distill.shard_index import ShardIndex
from pipeline.distill.shards import NBest, read_shard, shard_filename, shard_index_from_name, shard_name, shard_range
from pipeline.distill.stats import DistillStats
from pipeline.errors import DataError
from pipeline.streaming import publish_dir

log = logging.getLogger("pipeline.distill.postprocess")
PART_FILES = ("src.spm", "tgt.spm", "ids", "src.txt", "tgt.txt")  # in this order in every shard's OUT_DIR
STATS_FILE = "stats.json"
FORMAT = 1


def order_records(path: Path, shard: int, index: ShardIndex) -> list[NBest]:
    """The shard's records in training order, with reassembly's checks and messages."""
    shards = index.shards
    name = path.name
    parsed = shard_index_from_name(path)
    if parsed is not None and parsed[1] != shards:
        raise DataError(f"shard {name}: made for {parsed[1]} shards, this run has {shards}")
    if parsed is not None and parsed[0] != shard:
        raise DataError(f"shard {name}: given as shard {shard_name(shard, shards)}")
    expected = index.ids(shard)
    wanted = set(expected)
    found: dict[int, NBest] = {}
    for record in read_shard(path):
        if record.id not in wanted:
            owner = index.owner(record.id)
            if owner is None:
                raise DataError(f"shard {name}: foreign id {record.id}: not in the training ids")
            raise DataError(f"shard {name}: foreign id {record.id}: it belongs to shard {shard_name(owner, shards)}")
        if record.id in found:
            raise DataError(f"shard {name}: duplicated id {record.id} (also in shard {name})")
        found[record.id] = record
    if len(found) != len(expected):
        missing = [rid for rid in expected if rid not in found]
        start, end = index.range(shard)
        raise DataError(f"shard {shard_filename(shard, shards)}: {len(missing)} of its {end - start} ids missing"
                        f" (first: id {missing[0]})")
    return [found[rid] for rid in expected]


def postprocess(shard_path: Path, shard: int, index: ShardIndex, detok, selection: str, metric: str,
                filters: FilterConfig, out_dir: Path) -> DistillStats:
    """Write OUT_DIR for one shard (atomically); returns the shard's statistics."""
    records = order_records(shard_path, shard, index)
    src_spm, ref_spm = index.read("src_spm", shard), index.read("ref_spm", shard)
    src_text, ref_text = index.read("src_text", shard), index.read("ref_text", shard)
    choose = selector(selection, metric, detok)
    stats = DistillStats()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        files = [(tmp / name).open("w", encoding="utf-8", newline="\n") for name in PART_FILES]
        try:
            out_src_spm, out_tgt_spm, out_ids, out_src_text, out_tgt_text = files
            for i, record in enumerate(records):
                rank = choose(record, ref_text[i])
                hyp = record.hyps[rank].text
                hyp_text = detok(hyp)
                reason = hypothesis_rejection(src_spm[i], hyp, filters)
                kept = reason is None or filters.on_filtered == "reference"
                tgt_spm, tgt_text = (hyp, hyp_text) if reason is None else (ref_spm[i], ref_text[i])
                stats.add_pair(rank, hyp_text, ref_text[i], reason, kept, src_spm[i], tgt_spm, ref_spm[i], tgt_text)
                if kept:
                    out_src_spm.write(f"{src_spm[i]}\n")
                    out_tgt_spm.write(f"{tgt_spm}\n")
                    out_ids.write(f"{record.id}\n")
                    out_src_text.write(f"{src_text[i]}\n")
                    out_tgt_text.write(f"{tgt_text}\n")
        finally:
            for f in files:
                f.close()
        start, end = index.range(shard)
        meta = {
            "format": FORMAT, "shard": shard, "shards": index.shards, "positions": [start, end],
            "selection": selection, "metric": metric, "filter_config": asdict(filters),
            "stats": stats.to_json(),
        }
        (tmp / STATS_FILE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The target selection and filter flags (defaults: config distill.selection, distill.filters)."""
    parser.add_argument("--selection", choices=SELECTIONS, default="seq_inter")
    parser.add_argument("--metric", choices=METRICS, default="chrf")
    defaults = FilterConfig()
    parser.add_argument("--min-length-ratio", type=float, default=defaults.min_length_ratio)
    parser.add_argument("--max-length-ratio", type=float, default=defaults.max_length_ratio)
    parser.add_argument("--max-repeat", type=int, default=defaults.max_repeat)
    parser.add_argument("--max-repeat-ngram", type=int, default=defaults.max_repeat_ngram)
    parser.add_argument("--on-filtered", choices=ON_FILTERED, default=defaults.on_filtered)


def filter_config(args: argparse.Namespace) -> FilterConfig:
    return FilterConfig(args.min_length_ratio, args.max_length_ratio, args.max_repeat, args.max_repeat_ngram,
                        args.on_filtered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", type=Path, required=True, help="the decoded shard (n-best JSONL)")
    parser.add_argument("--shard-id", type=int, required=True, help="0-based shard index")
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--index", type=Path, required=True, help="the shard index (pipeline.distill.shard_index)")
    parser.add_argument("--spm-model", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    add_selection_arguments(parser)
    args = parser.parse_args()
    index = ShardIndex.load(args.index)
    index.check_count(args.num_shards)
    if not 0 <= args.shard_id < args.num_shards:
        raise DataError(f"--shard-id {args.shard_id} outside 0..{args.num_shards - 1}")
    if not args.shard.is_file():
        raise DataError(f"{args.shard}: no such file")
    sp = spm.load(args.spm_model)
    stats = postprocess(args.shard, args.shard_id, index, lambda s: spm.decode_line(sp, s), args.selection,
                        args.metric, filter_config(args), args.out_dir)
    start, end = shard_range(index.lines, index.shards, args.shard_id)
    log.info("shard %s (positions %d..%d): %d of %d pairs kept, filtered %s -> %s", shard_name(args.shard_id, index.shards),
             start, end - 1, stats.pairs_out, stats.pairs_in, stats.filtered, args.out_dir)


if __name__ == "__main__":
    run(main)
