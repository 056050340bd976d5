"""Benchmark of the word-KD criterion: word-KD training steps (online and cached teacher) vs a CE step.

    python -m pipeline.benchmarks.word_kd            # the issue's prototype sizes (a few minutes on 2 cores)
    python -m pipeline.benchmarks.word_kd --quick    # tiny models, seconds

Same batch, same student and teacher, measured side by side in one run: every repetition times each
variant once, in turn (CE step, teacher forward, word-KD steps online with the full vocabulary and with
the top-8, word-KD reading the top-8 from a teacher cache (pipeline.kdcache, built once before timing),
a naive KL for reference), and the medians are compared. A training step is zero_grad + forward +
backward + Adam step. Goals: online word-KD / (CE + teacher forward) <= 1.10, and cached word-KD / CE
<= 1.10 (every variant's ratio to CE is printed). The batch is a real fairseq dataset (random
sentences, binarised in a temporary directory) so that the cache is read by sample id as in training. Peak memory: the process's peak RSS during the step (Linux
VmHWM, reset before each step) on CPU, torch.cuda.max_memory_allocated on GPU; "+" is the rise over
the memory in use when the step began. Models and data are random (no download): teacher 3+3 layers,
student 3+1, d=256, ffn 1024, 8k vocabulary, about 4k target tokens in 270 sentences.

On a machine shared with other jobs, use --threads 1: with 2 threads on 2 busy cores every parallel
op waits for a descheduled thread and all timings (and their ratios) become noise.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and batch: a fast smoke run")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default 8000; --quick 1000)")
    parser.add_argument("--tokens", type=int, help="target tokens per batch (default 4000; --quick 600)")
    parser.add_argument("--reps", type=int, help="timed repetitions per variant (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--fp16", action="store_true", help="half-precision student and teacher (cuda)")
    parser.add_argument("--variants", default="ce,teacher,kd,kd_t2,kd_top8,kd_cache8,naive", help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.vocab = args.vocab or (1000 if args.quick else 8000)
    args.tokens = args.tokens or (600 if args.quick else 4000)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


# (encoder layers, decoder layers, embed dim, ffn dim, heads)
SIZES = {
    "full": {"teacher": (3, 3, 256, 1024, 4), "student": (3, 1, 256, 1024, 4)},
    "quick": {"teacher": (1, 1, 64, 128, 2), "student": (1, 1, 48, 96, 2)},
}


def write_dicts(data_dir: Path, vocab: int) -> None:
    """dict.de.txt = dict.en.txt with vocab - 4 words (fairseq adds <s>, <pad>, </s>, <unk>)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"w{i} {vocab - i}\n" for i in range(vocab - 4))
    for lang in ("de", "en"):
        (data_dir / f"dict.{lang}.txt").write_text(text)


def model_cfg(data_dir: Path, size, dropout: float = 0.1):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    enc, dec, dim, ffn, heads = size
    argv = [
        str(data_dir), "--task", "translation", "--source-lang", "de", "--target-lang", "en",
        "--arch", "transformer", "--share-decoder-input-output-embed", "--dropout", str(dropout),
        "--encoder-layers", str(enc), "--decoder-layers", str(dec),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
    ]  # fmt: skip
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    return convert_namespace_to_omegaconf(args)


def save_teacher(path: Path, cfg, model) -> None:
    """A minimal fairseq checkpoint: what checkpoint_utils.load_checkpoint_to_cpu reads."""
    from omegaconf import OmegaConf

    state = {
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "args": None,
        "model": model.state_dict(),
        "optimizer_history": [
            {"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "Adam",
             "lr_scheduler_state": {"best": None}, "num_updates": 0}
        ],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }  # fmt: skip
    torch.save(state, path)


def random_batch(task, tokens: int, seed: int, data_dir: Path):
    """About `tokens` target tokens (eos included) in sentences of 8-20 words, binarised as data_dir's train
    split and collated as fairseq does (sample ids: the dataset's indices)."""
    from fairseq.data import indexed_dataset

    rng = random.Random(seed)
    d = task.target_dictionary
    low, high = d.nspecial, len(d)
    src, tgt, total = [], [], 0
    while total < tokens:
        t_len, s_len = rng.randint(8, 20), rng.randint(8, 20)
        src.append(torch.tensor([rng.randrange(low, high) for _ in range(s_len)] + [d.eos()]))
        tgt.append(torch.tensor([rng.randrange(low, high) for _ in range(t_len)] + [d.eos()]))
        total += t_len + 1
    for lang, sentences in (("de", src), ("en", tgt)):
        prefix = str(data_dir / f"train.de-en.{lang}")
        builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
        for sentence in sentences:
            builder.add_item(sentence)
        builder.finalize(prefix + ".idx")
    task.load_dataset("train")
    ds = task.dataset("train")
    return ds.collater([ds[i] for i in range(len(ds))])


def build_cache(teacher_path: Path, data_dir: Path, cache: Path, topk: int) -> None:
    """The teacher cache of the benchmark's train split (one shard), as `python -m pipeline.kdcache build` makes it."""
    from pipeline.kdcache import store
    from pipeline.kdcache.build import build_shard, load_teachers_and_task, split_sizes

    models, task, device = load_teachers_and_task([teacher_path], data_dir)
    build_shard(models, task, device, teachers=[teacher_path], data_dir=data_dir, cache=cache, split="train", shard=0,
                shards=1, topk=topk, max_tokens=4000)
    store.write_index(cache, split_sizes(task, ["train"]), 1, teacher_path, data_dir)


class NaiveKD(torch.nn.Module):
    """The prototype's word-KD: both log-softmaxes recomputed, F.kl_div, autograd (the teacher a submodule-free list)."""

    def __init__(self, task, teacher, alpha=0.5, eps=0.1):
        super().__init__()
        self.pad = task.target_dictionary.pad()
        self._teacher = [teacher]
        self.alpha, self.eps = alpha, eps

    def forward(self, model, sample):
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        with torch.no_grad():
            t_logits = self._teacher[0](**sample["net_input"])[0]
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        v = lprobs.size(-1)
        target = sample["target"].view(-1)
        ce, _ = label_smoothed_nll_loss(lprobs.view(-1, v), target, self.eps, ignore_index=self.pad)
        student = F.log_softmax(net_output[0].float(), -1).view(-1, v)
        teacher = F.log_softmax(t_logits.float(), -1).view(-1, v)
        kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
        kl = kl.masked_fill(target.eq(self.pad), 0.0).sum()
        return self.alpha * ce + (1 - self.alpha) * kl, sample["ntokens"], {}


class PeakMemory:
    """Peak memory of a block: VmHWM (reset through /proc/self/clear_refs) on CPU, the allocator's on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_ok = device.type == "cpu" and self._clear()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    @staticmethod
    def _clear() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if self.cpu_ok:
            self._clear()
            return self._status("VmRSS")
        return 0

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM") if self.cpu_ok else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from fairseq import models, tasks
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    from fairseq_plugins.criterions.word_kd import WordKDCriterion
    from pipeline.model_size import count_parameters

    device = torch.device(args.device)
    dtype = torch.float16 if args.fp16 else torch.float32
    sizes = SIZES["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="word_kd_bench_") as tmp:
        data_dir = Path(tmp) / "data"
        write_dicts(data_dir, args.vocab)
        t_cfg, s_cfg = model_cfg(data_dir, sizes["teacher"]), model_cfg(data_dir, sizes["student"])
        task = tasks.setup_task(s_cfg.task)
        teacher = models.build_model(t_cfg.model, task)
        teacher_path = Path(tmp) / "teacher.pt"
        save_teacher(teacher_path, t_cfg, teacher)
        student = models.build_model(s_cfg.model, task).to(device=device, dtype=dtype).train()
        teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)

        sample = random_batch(task, args.tokens, args.seed, data_dir)
        variants = [v for v in args.variants.split(",") if v]
        cache_dir = Path(tmp) / "kdcache"
        if "kd_cache8" in variants:
            build_cache(teacher_path, data_dir, cache_dir, topk=8)
        if device.type == "cuda":
            from fairseq import utils

            sample = utils.move_to_cuda(sample, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-5)

        def kd(temperature=1.0, topk=0, cache=""):
            return WordKDCriterion(
                task, sentence_avg=False, teacher_path=str(teacher_path), kd_alpha=0.5,
                kd_temperature=temperature, kd_topk=topk, label_smoothing=0.1, kd_teacher_cache=cache,
            )  # fmt: skip

        builders = {
            "ce": lambda: LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1),
            "kd": kd,
            "kd_t2": lambda: kd(temperature=2.0),
            "kd_top8": lambda: kd(topk=8),
            "kd_cache8": lambda: kd(topk=8, cache=str(cache_dir)),
            "naive": lambda: NaiveKD(task, teacher),
        }
        criteria = {v: build() for v, build in builders.items() if v in variants}

        def train_step(criterion):
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = criterion(student, sample)
            loss.backward()
            optimizer.step()

        def teacher_forward():
            with torch.no_grad():
                teacher(**sample["net_input"])

        steps = {v: (teacher_forward if v == "teacher" else (lambda c=criteria[v]: train_step(c))) for v in variants}
        memory = PeakMemory(device)
        times = {v: [] for v in variants}
        peaks = {v: [] for v in variants}
        names = list(steps)
        for rep in range(args.warmup + args.reps):
            # rotate the order each repetition: no variant always runs right after the same one
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                step = steps[name]
                base = memory.start()
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                peak = memory.peak()
                if rep >= args.warmup:
                    times[name].append(elapsed)
                    if peak is not None:
                        peaks[name].append((peak, peak - base))

    median = {v: statistics.median(ts) for v, ts in times.items()}
    ntok, nsent = int(sample["ntokens"]), int(sample["target"].size(0))
    print(f"word-KD benchmark ({'quick' if args.quick else 'prototype sizes'}), device {device}, dtype {dtype}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"  teacher {count_parameters(teacher)['parameters'] / 1e6:.2f}M params {sizes['teacher']}, "
          f"student {count_parameters(student)['parameters'] / 1e6:.2f}M params {sizes['student']}, vocabulary {args.vocab}")  # fmt: skip
    print(f"  batch: {nsent} sentences, {ntok} target tokens; {args.reps} timed repetitions (median), "
          f"{args.warmup} warm-up; MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}")  # fmt: skip
    labels = {
        "ce": "CE step (label-smoothed CE, eps 0.1)",
        "teacher": "teacher forward (no_grad)",
        "kd": "word-KD step (alpha 0.5, T 1, full vocab)",
        "kd_t2": "word-KD step (alpha 0.5, T 2, full vocab)",
        "kd_top8": "word-KD step (alpha 0.5, T 1, top-8)",
        "kd_cache8": "word-KD step (alpha 0.5, T 1, top-8 from the cache)",
        "naive": "naive KD step (log-softmaxes recomputed, kl_div)",
    }
    for v in variants:
        mem = ""
        if peaks[v]:
            peak, rise = max(p for p, _ in peaks[v]), max(r for _, r in peaks[v])
            mem = f"  peak {peak / 2**20:8.0f} MiB (+{rise / 2**20:.0f} MiB)"
        print(f"  {labels[v]:<50} {median[v] * 1000:8.0f} ms{mem}")
    results = {"median_s": median, "peaks": peaks}
    if "ce" in median and "teacher" in median:
        base = median["ce"] + median["teacher"]
        print(f"  CE step + teacher forward{'':<25} {base * 1000:8.0f} ms")
        print("  ratio X / (CE + teacher): of the medians | of the minima | median of the per-repetition ratios")
        ratios = {}
        for v in ("kd", "kd_t2", "kd_top8", "kd_cache8", "naive"):
            if v in median:
                ratios[v] = median[v] / base
                of_min = min(times[v]) / (min(times["ce"]) + min(times["teacher"]))
                paired = statistics.median(
                    k / (c + t) for k, c, t in zip(times[v], times["ce"], times["teacher"], strict=True)
                )
                extra = (median[v] - base) * 1000
                print(f"  ratio {v:<8} {ratios[v]:6.3f} | {of_min:6.3f} | {paired:6.3f}   (median overhead {extra:+.0f} ms)")
        results["ratios"] = ratios
        if "kd" in ratios:
            verdict = "meets" if ratios["kd"] <= 1.10 else "MISSES"
            print(f"  goal word-KD / (CE + teacher) <= 1.10: {verdict} ({ratios['kd']:.3f}, of the medians)")
    if "ce" in median:
        print("  ratio X / CE step: of the medians | median of the per-repetition ratios")
        to_ce = {}
        for v in variants:
            if v not in ("ce", "teacher"):
                to_ce[v] = median[v] / median["ce"]
                paired = statistics.median(k / c for k, c in zip(times[v], times["ce"], strict=True))
                print(f"  ratio {v:<9} {to_ce[v]:6.3f} | {paired:6.3f}")
        results["ratios_to_ce"] = to_ce
        if "kd_cache8" in to_ce:
            verdict = "meets" if to_ce["kd_cache8"] <= 1.10 else "MISSES"
            print(f"  goal cached word-KD / CE <= 1.10: {verdict} ({to_ce['kd_cache8']:.3f}, of the medians)")
    return results


if __name__ == "__main__":
    warnings.filterwarnings("ignore")  # fairseq/hydra deprecation chatter
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    logging.getLogger("fairseq_plugins").setLevel(logging.WARNING)
    main()
