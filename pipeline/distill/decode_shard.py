"""Beam-decode one shard of the training source with the teacher: its n-best lists, by sentence id.

    python -m pipeline.distill.decode_shard --model work/models/teacher-<key>/model.pt --data work/data/<dir>/bin \
        --index work/data/<dir>/distill_index-<shard_size>.json --shard 1 --num-shards 8 \
        --out work/distill/<dir>/shards/shard001-of-008.jsonl \
        [--beam 5] [--nbest 5] [--lenpen 1] [--max-len-a 1.2] [--max-len-b 10]
        [--max-tokens 6000] [--batch-size N] [--fp16] [--cpu] [--threads 2]
        [--backend ctranslate2 --ct2-model work/ct2/teacher-<key> [--compute-type int8] [--vmap]]

    an ensemble: --model work/models/teacher-<key>/model.pt:work/models/teacher_2-<key>/model.pt (fairseq backend)
    a text-to-text teacher (teacher.ct2_model): --backend ctranslate2 --ct2-model DIR --text-teacher
        --out-spm work/data/<dir>/spm/spm.model --src de --tgt en (it reads the shard's cleaned text)

The decoding flags are pipeline.decoding's (add_decoding_args): the same search and batch settings
for either backend.

The shard reads only its own range of the spm-encoded source and of the ids, by byte offset through
the shard index (pipeline.distill.shard_index: no split copies of the corpus on disk, memory in
proportion to the shard); --num-shards must be the index's shard count, and a file changed since the
index was made fails with a message naming it, before the teacher is loaded. The output is written to a temporary file, verified (one record per id of
the range, in order, each with nbest hypotheses) and only then renamed: a killed job leaves no
finished shard, so a rerun redoes exactly the shards that did not finish.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.cli import run
from pipeline.decoding import SearchOptions, add_decoding_args, backend_from_args
from pipeline.distill.shard_index import ShardIndex
from pipeline.distill.shards import Hyp, NBest, shard_filename, write_shard
from pipeline.distill.text_teacher import decode_text
from pipeline.errors import BackendError, ConfigError, DataError

# The distillation keeps an n-best list per sentence (config distill.nbest), for seq_inter to choose from.
DISTILL_NBEST = 5

log = logging.getLogger("pipeline.distill.decode_shard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        help="the teacher's fairseq checkpoint, or several joined by ':' (an ensemble; --backend fairseq)")
    parser.add_argument("--data", type=Path, help="directory with the teacher's dictionaries (fairseq)")
    parser.add_argument("--index", type=Path, required=True,
                        help="the shard index of the cleaned training corpus (pipeline.distill.shard_index)")
    parser.add_argument("--text-teacher", action="store_true",
                        help="a CTranslate2 teacher with its own SentencePiece model(s): the shard's cleaned text in, "
                        "output re-encoded with --out-spm")
    parser.add_argument("--out-spm", type=Path, help="--text-teacher: the students' SentencePiece model")
    parser.add_argument("--src", help="source language (a CTranslate2 directory without pipeline.json)")
    parser.add_argument("--tgt", help="target language")
    parser.add_argument("--shard", type=int, required=True, help="0-based shard index")
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    add_decoding_args(parser)
    parser.set_defaults(nbest=DISTILL_NBEST)
    args = parser.parse_args()
    options = SearchOptions.from_args(args)

    if args.text_teacher and (args.backend != "ctranslate2" or args.out_spm is None):
        raise ConfigError("--text-teacher needs --backend ctranslate2 --ct2-model DIR and --out-spm (the students' spm)")
    if not 0 <= args.shard < args.num_shards:
        raise ConfigError(f"--shard {args.shard} outside 0..{args.num_shards - 1}")
    expected_name = shard_filename(args.shard, args.num_shards)
    if args.out.name != expected_name:
        log.warning("output %s is not named %s: reassembly will not check which shard it is", args.out, expected_name)

    index = ShardIndex.load(args.index)
    index.check_count(args.num_shards)
    start, end = index.range(args.shard)
    role = "src_text" if args.text_teacher else "src_spm"  # a text-to-text teacher reads the cleaned text
    shard_ids, lines = index.ids(args.shard), index.read(role, args.shard)
    source = index.file(role)
    where = f"shard {expected_name} (positions {start}..{end - 1})"
    for position, (rid, line) in enumerate(zip(shard_ids, lines, strict=True), start=start):
        if not line.strip():
            raise DataError(f"{source}: line {position + 1} (id {rid}): empty source in {where}")

    if not lines:  # more shards than sentences: nothing to decode, but the shard must exist
        write_shard(args.out, [], shard_ids, nbest=options.nbest)
        log.info("%s: empty, written to %s", where, args.out)
        return

    backend = backend_from_args(args)  # either backend: the same n-best contract, a backend changes speed only
    log.info("%s: decoding %d sentences with %s on %s, %s, %s", where, len(lines), backend.name,
             backend.describe_device(), options, options.batch(backend.default_batch))
    began = time.perf_counter()
    if args.text_teacher:
        nbests = decode_text(backend, lines, options, args.out_spm)
    else:
        nbests = backend.decode(lines, options).hypotheses
    seconds = time.perf_counter() - began
    if len(nbests) != len(lines):
        raise BackendError(f"{where}: the decoder returned {len(nbests)} n-best lists for {len(lines)} sentences")
    records = [
        NBest(rid, tuple(Hyp(h.tokens, h.score) for h in hyps)) for rid, hyps in zip(shard_ids, nbests, strict=True)
    ]
    write_shard(args.out, records, shard_ids, nbest=options.nbest)
    log.info("%s: %d sentences in %.1f s (%.1f sent/s), written to %s", where, len(records), seconds,
             len(records) / seconds if seconds > 0 else float("nan"), args.out)


if __name__ == "__main__":
    run(main)
