"""Beam-decode one shard of the training source with the teacher: its n-best lists, by sentence id.

    python -m pipeline.distill.decode_shard --model work/models/teacher/model.pt --data work/data/bin \
        --source work/data/spm/train.de --ids work/data/clean/train.ids --shard 1 --num-shards 8 \
        --out work/distill/shards/shard001-of-008.jsonl \
        [--beam 5] [--nbest 5] [--lenpen 1] [--max-len-a 1.2] [--max-len-b 10]
        [--max-tokens 6000] [--batch-size N] [--fp16] [--cpu] [--threads 2]

The shard reads its range of positions straight from the full spm-encoded source (no split copies
of the corpus on disk). The output is written to a temporary file, verified (one record per id of
the range, in order, each with nbest hypotheses) and only then renamed: a killed job leaves no
finished shard, so a rerun redoes exactly the shards that did not finish.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline import ct2
from pipeline.cli import run
from pipeline.corpus import CorpusError, read_lines
from pipeline.distill.shards import Hyp, NBest, read_ids, shard_filename, shard_range, write_shard

log = logging.getLogger("pipeline.distill.decode_shard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the teacher's fairseq checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="directory with the teacher's dictionaries")
    parser.add_argument("--source", type=Path, required=True, help="spm-encoded cleaned training source")
    parser.add_argument("--ids", type=Path, required=True, help="ids of the cleaned training pairs, one per line")
    parser.add_argument("--shard", type=int, required=True, help="0-based shard index")
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--nbest", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--max-len-a", type=float, default=1.2)
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--fp16", action="store_true", help="half precision (only on CUDA)")
    parser.add_argument("--cpu", action="store_true", help="decode on the CPU even where CUDA exists")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ct2.add_backend_arguments(parser)
    args = parser.parse_args()

    if not 0 <= args.shard < args.num_shards:
        raise CorpusError(f"--shard {args.shard} outside 0..{args.num_shards - 1}")
    expected_name = shard_filename(args.shard, args.num_shards)
    if args.out.name != expected_name:
        log.warning("output %s is not named %s: reassembly will not check which shard it is", args.out, expected_name)

    ids = read_ids(args.ids)
    source = read_lines(args.source)
    if len(source) != len(ids):
        raise CorpusError(f"{args.source}: {len(source)} lines, but {args.ids} has {len(ids)} ids")
    start, end = shard_range(len(ids), args.num_shards, args.shard)
    shard_ids, lines = ids[start:end], source[start:end]
    where = f"shard {expected_name} (positions {start}..{end - 1})"
    for position, line in enumerate(lines, start=start):
        if not line.strip():
            raise CorpusError(f"{args.source}: line {position + 1} (id {ids[position]}): empty source in {where}")

    if not lines:  # more shards than sentences: nothing to decode, but the shard must exist
        write_shard(args.out, [], shard_ids, nbest=args.nbest)
        log.info("%s: empty, written to %s", where, args.out)
        return

    import torch

    from pipeline.decode import BatchSettings, GenerationSettings, decode_lines, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = GenerationSettings(beam=args.beam, nbest=args.nbest, lenpen=args.lenpen,
                             max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    batch = BatchSettings(max_tokens=args.max_tokens, batch_size=args.batch_size)
    if args.backend == "ctranslate2":  # same n-best contract: a backend changes speed, not the data
        lm, decode_lines = ct2.load_from_args(args, threads=args.threads), ct2.decode_lines
    else:
        lm = load_model(args.model, data_dir=args.data, cpu=args.cpu, fp16=args.fp16)
    log.info("%s: decoding %d sentences on %s, %s, %s", where, len(lines), lm.describe_device(), gen, batch)
    began = time.perf_counter()
    nbests = decode_lines(lm, lines, gen, batch)
    seconds = time.perf_counter() - began
    if len(nbests) != len(lines):
        raise CorpusError(f"{where}: the decoder returned {len(nbests)} n-best lists for {len(lines)} sentences")
    records = [
        NBest(rid, tuple(Hyp(h.tokens, h.score) for h in hyps)) for rid, hyps in zip(shard_ids, nbests, strict=True)
    ]
    write_shard(args.out, records, shard_ids, nbest=args.nbest)
    log.info("%s: %d sentences in %.1f s (%.1f sent/s), written to %s", where, len(records), seconds,
             len(records) / seconds if seconds > 0 else float("nan"), args.out)


if __name__ == "__main__":
    run(main)
