"""Run the teacher once over a student's training targets and store its top-K per target token.

    python -m pipeline.kdcache shard --teacher work/models/teacher-<key>/model.pt --data work/distill/<dir>/bin \\
        --cache work/kdcache/distilled-<key> --split train --shard 0 --num-shards 2 --topk 8 [--max-tokens 4000]
    python -m pipeline.kdcache index --teacher ... --data ... --cache ... --num-shards 2 [--splits train,valid]
    python -m pipeline.kdcache build --teacher ... --data ... --cache ... --num-shards 2 --topk 8 [--splits train,valid]

`shard` computes one shard (one rule job); `index` checks that every shard of each split is finished
and made for the current teacher, dictionaries and data (else a clear error) and writes cache.json;
`build` does both in one process, keeping the shards already finished for the same inputs (a killed
run redoes only the others). The teacher runs in eval mode (no dropout), in float32, with teacher
forcing on the split's fairseq dataset, so sample ids are the ones fairseq-train batches carry.
Several --teacher checkpoints form an ensemble: the cache holds the top-K of the members' average
probability (at T = 1, as the word_kd criterion's online ensemble computes it).
Layout and format: pipeline.kdcache.store.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.distill.shards import shard_range
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.kdcache import store

log = logging.getLogger("pipeline.kdcache")
DEFAULT_SPLITS = "train,valid"  # the criterion reads train batches in training, valid batches in validation


def load_teachers_and_task(teachers: list[Path], data_dir: Path):
    """The teachers (eval mode, float32, on the GPU when there is one) and a translation task on data_dir
    (from the first teacher's settings)."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_plugins.criterions.word_kd import load_teacher

    for teacher in teachers:  # every missing file before loading any
        if not teacher.is_file():
            raise ModelError(f"teacher checkpoint not found: {teacher}")
    teacher = teachers[0]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(teacher))
    cfg = state.get("cfg") or (convert_namespace_to_omegaconf(state["args"]) if state.get("args") else None)
    if cfg is None:
        raise ModelError(f"{teacher}: not a fairseq checkpoint (no cfg or args)")
    del state
    cfg.task.data = str(data_dir)
    task = tasks.setup_task(cfg.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = []
    for path in teachers:
        try:
            model = load_teacher(str(path), task)  # checks that the teacher's dictionaries are data_dir's
        except ValueError as err:
            raise ModelError(str(err)) from None
        models.append(model.to(device=device, dtype=torch.float32).eval())
    return models, task, device


def batches(sizes: np.ndarray, start: int, end: int, max_tokens: int) -> list[np.ndarray]:
    """Sentence ids of [start, end) sorted by length, in batches of at most max_tokens padded tokens."""
    order = start + np.argsort(sizes[start:end], kind="stable")
    out, current, longest = [], [], 0
    for i in order:
        size = int(sizes[i])
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            out.append(np.array(current))
            current, longest = [], 0
        current.append(int(i))
        longest = max(longest, size)
    if current:
        out.append(np.array(current))
    return out


def ensemble_topk(logits: list[torch.Tensor], topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and ids of the top-K of the members' average probability, as the online ensemble
    averages them (at T = 1). Probabilities summed in place, not logaddexp of log-probabilities (several
    times slower on CPU); a probability that underflows float32 is floored at its smallest normal
    number, so every stored value is finite (the criterion's entropy term needs finite log-probabilities)."""
    probs = torch.softmax(logits[0], dim=-1)
    for member in logits[1:]:
        probs.add_(torch.softmax(member, dim=-1))
    values, index = probs.topk(topk, dim=-1, sorted=True)
    return values.div_(len(logits)).clamp_min_(torch.finfo(torch.float32).tiny).log_(), index


@torch.no_grad()
def teacher_topk(models, task, device, ids: np.ndarray, dataset, topk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sentence of `ids`: (token ids (L, K), log-probabilities (L, K) float32) of its L target tokens."""
    sample = dataset.collater([dataset[int(i)] for i in ids])
    if device.type == "cuda":
        from fairseq import utils

        sample = utils.move_to_cuda(sample, device)
    from fairseq_plugins.criterions.word_kd import teacher_logits

    if len(models) == 1:
        logits = teacher_logits(models[0], sample).float()
        # the online --kd-topk path takes the top-K of the logits: the same selection, stored as log-probabilities
        values, index = logits.topk(topk, dim=-1, sorted=True)
        values = values - torch.logsumexp(logits, dim=-1, keepdim=True)
    else:
        values, index = ensemble_topk([teacher_logits(model, sample).float() for model in models], topk)
    keep = sample["target"].ne(task.target_dictionary.pad())
    by_id = {int(i): b for b, i in enumerate(sample["id"].tolist())}
    out = []
    for i in ids:
        b = by_id[int(i)]
        rows = keep[b]
        out.append((index[b][rows].cpu().numpy(), values[b][rows].cpu().numpy()))
    return out


def build_shard(models, task, device, *, teachers: list[Path], data_dir: Path, cache: Path, split: str, shard: int,
                shards: int, topk: int, max_tokens: int) -> Path:
    """Compute and write one shard; returns its path."""
    from fairseq import utils

    dataset = loaded(task, split)
    n = len(dataset)
    start, end = shard_range(n, shards, shard)
    vocab = len(task.target_dictionary)
    if not 0 < topk <= vocab:
        raise ConfigError(f"--topk {topk}: must be in 1..{vocab} (the target vocabulary)")
    max_src, max_tgt = utils.resolve_max_positions(task.max_positions(), *(m.max_positions() for m in models))
    for i in range(start, end):
        if dataset.src_sizes[i] > max_src or dataset.tgt_sizes[i] > max_tgt:
            raise DataError(f"{data_dir} split {split}: sentence {i} ({dataset.src_sizes[i]} source, "
                            f"{dataset.tgt_sizes[i]} target tokens) exceeds the teacher's positions ({max_src}, {max_tgt})")
    path = store.shard_path(cache, split, shard, shards)
    ident = store.identity(teachers, data_dir, split)
    began = time.perf_counter()
    sizes = np.maximum(dataset.src_sizes, dataset.tgt_sizes).astype(np.int64)
    per_sentence: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for ids in batches(sizes, start, end, max(max_tokens, int(sizes[start:end].max(initial=1)))):
        for i, rows in zip(ids, teacher_topk(models, task, device, ids, dataset, topk), strict=True):
            if len(rows[0]) != dataset.tgt_sizes[i]:
                raise DataError(f"{data_dir} split {split}: sentence {i}: {len(rows[0])} target rows, "
                                f"dataset says {dataset.tgt_sizes[i]} tokens")
            per_sentence[int(i)] = rows
    order = range(start, end)
    lengths = [int(dataset.tgt_sizes[i]) for i in order]
    dtype = store.id_dtype(vocab)
    if lengths and sum(lengths):
        index = np.concatenate([per_sentence[i][0] for i in order]).astype(dtype)
        logprob = np.concatenate([per_sentence[i][1] for i in order]).astype(np.float16)
    else:
        index, logprob = np.zeros((0, topk), dtype=dtype), np.zeros((0, topk), dtype=np.float16)
    meta = {"split": split, "shard": shard, "shards": shards, "start": start, "end": end, "vocab": vocab,
            "identity": ident}
    store.write_shard(path, lengths=lengths, index=index, logprob=logprob, meta=meta)
    seconds = time.perf_counter() - began
    log.info("%s: sentences %d..%d, %d tokens, top-%d, %.1f s (%.0f tokens/s) on %s", path, start, end - 1,
             len(index), topk, seconds, len(index) / max(seconds, 1e-9), device)
    return path


def loaded(task, split: str):
    """The task's dataset of a split, loaded once."""
    if split not in task.datasets:
        task.load_dataset(split)
    return task.dataset(split)


def split_sizes(task, splits: list[str]) -> dict[str, int]:
    sizes = {}
    for split in splits:
        sizes[split] = len(loaded(task, split))
    return sizes


def parse_splits(text: str) -> list[str]:
    splits = [s for s in text.split(",") if s]
    if not splits:
        raise ConfigError("--splits: empty")
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--teacher", type=Path, nargs="+", required=True,
                        help="the teacher's fairseq checkpoint (several: an ensemble's members)")
    common.add_argument("--data", type=Path, required=True, help="the student's binarised training data")
    common.add_argument("--cache", type=Path, required=True, help="the cache directory")
    common.add_argument("--num-shards", type=int, required=True)
    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument("--topk", type=int, required=True, help="tokens kept per target position")
    compute.add_argument("--max-tokens", type=int, default=4000, help="padded tokens per teacher batch")
    compute.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    one = sub.add_parser("shard", parents=[common, compute], help="compute one shard")
    one.add_argument("--split", required=True, help="fairseq split name (train, valid)")
    one.add_argument("--shard", type=int, required=True, help="0-based shard index")
    sub.add_parser("index", parents=[common], help="check the shards, write cache.json").add_argument(
        "--splits", default=DEFAULT_SPLITS)
    sub.add_parser("build", parents=[common, compute], help="every unfinished shard, then the index").add_argument(
        "--splits", default=DEFAULT_SPLITS)
    args = parser.parse_args()
    if args.num_shards < 1:
        raise ConfigError(f"--num-shards {args.num_shards}: must be >= 1")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    models, task, device = load_teachers_and_task(args.teacher, args.data)
    where = {"teachers": args.teacher, "data_dir": args.data, "cache": args.cache}
    if args.command == "shard":
        if not 0 <= args.shard < args.num_shards:
            raise ConfigError(f"--shard {args.shard} outside 0..{args.num_shards - 1}")
        build_shard(models, task, device, **where, split=args.split, shard=args.shard, shards=args.num_shards,
                    topk=args.topk, max_tokens=args.max_tokens)
        return
    splits = parse_splits(args.splits)
    sizes = split_sizes(task, splits)
    if args.command == "build":
        vocab = len(task.target_dictionary)
        for split, n in sizes.items():
            ident = store.identity(args.teacher, args.data, split)
            for i in range(args.num_shards):
                start, end = shard_range(n, args.num_shards, i)
                path = store.shard_path(args.cache, split, i, args.num_shards)
                expected = {"split": split, "start": start, "end": end, "topk": args.topk, "vocab": vocab,
                            "identity": ident}
                current, why = store.shard_is_current(path, expected)
                if current:
                    log.info("%s: finished for this teacher and data: kept", path)
                    continue
                if why != "missing":
                    log.warning("%s: redone (%s)", path, why)
                build_shard(models, task, device, **where, split=split, shard=i, shards=args.num_shards,
                            topk=args.topk, max_tokens=args.max_tokens)
    index = store.write_index(args.cache, sizes, args.num_shards, args.teacher, args.data)
    summary = ", ".join(f"{s}: {v['sentences']} sentences, {v['tokens']} tokens" for s, v in index["splits"].items())
    log.info("%s: top-%d of %d entries; %s", Path(args.cache) / store.INDEX_FILE, index["topk"], index["vocab"], summary)
