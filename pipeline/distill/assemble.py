"""Reassemble the teacher's shards by id into the distilled training corpus, with its statistics.

    python -m pipeline.distill.assemble --shards S1.jsonl S2.jsonl ... --num-shards 3 \
        --ids work/data/<dir>/clean/train.ids --src-spm work/data/<dir>/spm/train.de --ref-spm work/data/<dir>/spm/train.en \
        --src-text work/data/<dir>/clean/train.de --ref-text work/data/<dir>/clean/train.en --spm-model work/data/<dir>/spm/spm.model \
        --out-src work/distill/<dir>/train.de --out-tgt work/distill/<dir>/train.en --out-ids work/distill/<dir>/train.ids \
        --text-src work/distill/<dir>/train.de.txt --text-tgt work/distill/<dir>/train.en.txt --stats work/distill/<dir>/stats.json \
        [--selection top1|seq_inter] [--metric chrf|bleu] [--min-length-ratio 0.333] [--max-length-ratio 3]
        [--max-repeat 4] [--max-repeat-ngram 4] [--on-filtered reference|drop]
        [--max-fallback-share 0.2] [--fail-fallback-share 0.9]

The whole corpus in one process: kept as the reference implementation of the per-shard path
(pipeline.distill.postprocess in each shard job, then pipeline.distill.merge), which produces the
same files and statistics in memory bounded by a shard.

Outputs are in training order. With --on-filtered reference (the default) every training pair is
kept, so the distilled corpus has exactly as many pairs as the cleaned corpus; with drop, the ids
file says which pairs remain and the statistics count the dropped ones.

Statistics (JSON): pairs_in/pairs_out; selection and selected_rank (how often each n-best rank was
chosen); filtered (count per filter, first failing filter only), fallback_to_reference, dropped;
targets_differ_from_reference; targets_with_unk; length_ratio_mean (target/source and
target/reference, in pieces); corpus BLEU/chrF (sacrebleu defaults) of the distilled targets
(distilled_vs_reference, fallbacks included) and of the selected hypotheses before filtering
(selected_vs_reference: the teacher's own quality on its training data); fallback_share and
fallback_check (pipeline.distill.fallback: a warning, or an error before anything is written, when
the filters rejected too many targets).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sacrebleu

from pipeline import spm
from pipeline.cli import run
from pipeline.corpus import read_parallel, write_lines
from pipeline.distill.fallback import FAIL_SHARE, WARN_SHARE, check_fallback
from pipeline.distill.filters import HYPOTHESIS_FILTERS, FilterConfig, hypothesis_rejection
from pipeline.distill.postprocess import add_selection_arguments
from pipeline.distill.selection import selector
from pipeline.distill.shards import NBest, read_ids, reassemble
from pipeline.errors import DataError

log = logging.getLogger("pipeline.distill.assemble")
UNK = "<unk>"


@dataclass
class Distilled:
    """The distilled corpus, in training order, and its statistics."""

    ids: list[int] = field(default_factory=list)
    src_spm: list[str] = field(default_factory=list)
    tgt_spm: list[str] = field(default_factory=list)
    src_text: list[str] = field(default_factory=list)
    tgt_text: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _scores(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    if not hyps:
        return {"bleu": None, "chrf": None}
    return {
        "bleu": round(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score, 2),
    }


def distill(
    records: Sequence[NBest],
    ids: Sequence[int],
    src_spm: Sequence[str],
    ref_spm: Sequence[str],
    src_text: Sequence[str],
    ref_text: Sequence[str],
    detok,
    selection: str = "top1",
    metric: str = "chrf",
    filters: FilterConfig | None = None,
) -> Distilled:
    """Select a target per pair, filter, and count; records must already be in training order."""
    filters = filters or FilterConfig()
    n = len(ids)
    for name, seq in (("records", records), ("spm source", src_spm), ("spm reference", ref_spm),
                      ("source text", src_text), ("reference text", ref_text)):
        if len(seq) != n:
            raise DataError(f"{name}: {len(seq)} lines, but the training corpus has {n} ids")
    choose = selector(selection, metric, detok)
    out = Distilled()
    removed = dict.fromkeys(HYPOTHESIS_FILTERS, 0)
    ranks: Counter[int] = Counter()
    selected_text: list[str] = []
    unk = differ = 0
    ratio_src: list[float] = []
    ratio_ref: list[float] = []
    kept_refs: list[str] = []
    for i, record in enumerate(records):
        if record.id != ids[i]:
            raise DataError(f"record {i}: id {record.id}, expected id {ids[i]} (records not in training order)")
        rank = choose(record, ref_text[i])
        ranks[rank] += 1
        hyp = record.hyps[rank].text
        hyp_text = detok(hyp)
        selected_text.append(hyp_text)
        reason = hypothesis_rejection(src_spm[i], hyp, filters)
        if reason is not None:
            removed[reason] += 1
            if filters.on_filtered == "drop":
                continue
            tgt_spm, tgt_text = ref_spm[i], ref_text[i]
        else:
            tgt_spm, tgt_text = hyp, hyp_text
        out.ids.append(record.id)
        out.src_spm.append(src_spm[i])
        out.tgt_spm.append(tgt_spm)
        out.src_text.append(src_text[i])
        out.tgt_text.append(tgt_text)
        kept_refs.append(ref_text[i])
        differ += tgt_spm.split() != ref_spm[i].split()
        unk += UNK in tgt_spm.split()
        n_tgt = len(tgt_spm.split())
        ratio_src.append(n_tgt / max(1, len(src_spm[i].split())))
        ratio_ref.append(n_tgt / max(1, len(ref_spm[i].split())))
    total_removed = sum(removed.values())
    out.stats = {
        "pairs_in": n,
        "pairs_out": len(out.ids),
        "selection": selection,
        "seq_inter_metric": metric if selection == "seq_inter" else None,
        "selected_rank": {str(k): v for k, v in sorted(ranks.items())},
        "filtered": {**removed, "total": total_removed},
        "on_filtered": filters.on_filtered,
        "fallback_to_reference": total_removed if filters.on_filtered == "reference" else 0,
        "dropped": total_removed if filters.on_filtered == "drop" else 0,
        "targets_differ_from_reference": differ,
        "targets_differ_fraction": round(differ / len(out.ids), 4) if out.ids else 0.0,
        "targets_with_unk": unk,
        "length_ratio_mean": {"target_to_source": round(_mean(ratio_src), 4), "target_to_reference": round(_mean(ratio_ref), 4)},
        # the distilled targets as the student sees them (fallbacks included) ...
        "distilled_vs_reference": _scores(out.tgt_text, kept_refs),
        # ... and the teacher's selected hypotheses before any filter: the teacher's own quality
        "selected_vs_reference": _scores(selected_text, ref_text),
        "filter_config": asdict(filters),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, nargs="+", required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    for name in ("ids", "src-spm", "ref-spm", "src-text", "ref-text", "spm-model",
                 "out-src", "out-tgt", "out-ids", "text-src", "text-tgt", "stats"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    add_selection_arguments(parser)  # the same flags and defaults as the per-shard path
    parser.add_argument("--max-fallback-share", type=float, default=WARN_SHARE,
                        help="warn when more pairs than this share fall back to the reference or are dropped")
    parser.add_argument("--fail-fallback-share", type=float, default=FAIL_SHARE, help="fail above this share")
    args = parser.parse_args()
    if len(args.shards) != args.num_shards:
        raise DataError(f"{len(args.shards)} shard files given for --num-shards {args.num_shards}")
    filters = FilterConfig(args.min_length_ratio, args.max_length_ratio, args.max_repeat, args.max_repeat_ngram, args.on_filtered)

    ids = read_ids(args.ids)
    src_spm, ref_spm = read_parallel(args.src_spm, args.ref_spm, "train")
    src_text, ref_text = read_parallel(args.src_text, args.ref_text, "train")
    if len(src_spm) != len(ids) or len(src_text) != len(ids):
        raise DataError(f"{args.ids}: {len(ids)} ids, but {args.src_spm} has {len(src_spm)} lines and {args.src_text} {len(src_text)}")
    records = reassemble(args.shards, ids, args.num_shards)
    log.info("reassembled %d records from %d shards", len(records), args.num_shards)
    sp = spm.load(args.spm_model)
    result = distill(records, ids, src_spm, ref_spm, src_text, ref_text, lambda s: spm.decode_line(sp, s),
                     args.selection, args.metric, filters)
    result.stats["shards"] = args.num_shards
    check_fallback(result.stats, args.max_fallback_share, args.fail_fallback_share)  # an error: nothing written

    write_lines(args.out_src, result.src_spm)
    write_lines(args.out_tgt, result.tgt_spm)
    write_lines(args.out_ids, (str(i) for i in result.ids))
    write_lines(args.text_src, result.src_text)
    write_lines(args.text_tgt, result.tgt_text)
    write_lines(args.stats, [json.dumps(result.stats, indent=2)])
    log.info("distilled %d of %d pairs; filtered %s; BLEU %s", result.stats["pairs_out"], result.stats["pairs_in"],
             result.stats["filtered"], result.stats["distilled_vs_reference"]["bleu"])


if __name__ == "__main__":
    run(main)
