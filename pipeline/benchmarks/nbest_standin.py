"""BENCHMARK STAND-IN FOR THE TEACHER: n-best lists derived from the reference, no model, no decoding.

    python -m pipeline.benchmarks.nbest_standin --index work/data/<dir>/distill_index-<shard_size>.json --shard-id 1 --num-shards 8 \
        --out work/distill/<dir>/shards/shard001-of-008.jsonl [--nbest 5] [--seed 1]

Writes a shard file in the format of pipeline.distill.decode_shard (written and verified the same
way), so that post-processing and the merge can be measured and tested at any corpus size without
a teacher: decoding cost is measured elsewhere (pipeline.benchmarks.ct2_vs_fairseq). Each
hypothesis is the SentencePiece reference with deterministic damage (per id and seed): pieces
dropped or swapped, a piece looped, a truncated or an empty output, so that seq_inter has real
choices and every filter fires on some pairs. Scores are made up (descending with rank).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from pipeline.cli import run
from pipeline.distill.shard_index import ShardIndex
from pipeline.distill.shards import Hyp, NBest, write_shard


def damaged(pieces: list[str], rng: random.Random) -> list[str]:
    """One made-up hypothesis from the reference pieces."""
    out = list(pieces)
    roll = rng.random()
    if roll < 0.01:
        return []  # empty output
    if roll < 0.03 and out:
        return out + [out[-1]] * 8  # a loop (repeat filter)
    if roll < 0.05 and out:
        return out[: max(1, len(out) // 5)]  # truncated (length ratio filter on long sentences)
    for _ in range(rng.randint(0, 3)):
        if len(out) > 1 and rng.random() < 0.5:
            del out[rng.randrange(len(out))]
        elif len(out) > 1:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def standin_nbest(rid: int, reference_spm: str, nbest: int, seed: int) -> NBest:
    rng = random.Random(seed * 1_000_003 + rid)
    pieces = reference_spm.split()
    hyps = tuple(Hyp(" ".join(damaged(pieces, rng)), round(-0.1 * (rank + 1) - rng.random() * 0.05, 4))
                 for rank in range(nbest))
    return NBest(rid, hyps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--shard-id", type=int, required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nbest", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    index = ShardIndex.load(args.index)
    index.check_count(args.num_shards)
    ids, refs = index.ids(args.shard_id), index.read("ref_spm", args.shard_id)
    records = (standin_nbest(rid, ref, args.nbest, args.seed) for rid, ref in zip(ids, refs, strict=True))
    write_shard(args.out, records, ids, nbest=args.nbest)


if __name__ == "__main__":
    run(main)
