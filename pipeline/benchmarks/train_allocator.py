"""Benchmark of glibc allocator settings for CPU training: fairseq-train updates with and without them.

    python -m pipeline.benchmarks.train_allocator --data work/data/<dir>/bin --preset student_deep_shallow
    python -m pipeline.benchmarks.train_allocator --data work/data/<dir>/bin --preset student_deep_shallow \\
        --teacher work/models/teacher-<key>/model.pt      # word-KD updates (the teacher runs in every step)

glibc returns every large freed block to the kernel (mmap/munmap), so each training step page-faults
its activations and gradients in again. MALLOC_MMAP_MAX_=0 keeps large blocks on the heap and a huge
MALLOC_TRIM_THRESHOLD_ stops the heap being trimmed: the memory is reused instead (pipeline.train
sets these for CPU training; ALLOCATOR_ENV). Measured side by side in one run: the real fairseq-train
on the real binarised data, for the same updates, the variants alternating run by run; the time is
the wall clock between fairseq's first and last progress records (start-up excluded), and the
memory the process's peak RSS. The ratio printed is with / without.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.models import ModelSpec, fairseq_train_args
from pipeline.presets import preset_args
from pipeline.train import ALLOCATOR_ENV, PLUGINS

_RECORD = re.compile(r"\| train_inner \| (\{.*\})\s*$")
BASELINE = {"MALLOC_MMAP_MAX_": None, "MALLOC_TRIM_THRESHOLD_": None}


def train_command(data: Path, save_dir: Path, preset: str, updates: int, interval: int, max_tokens: int,
                  teacher: str | None) -> list[str]:
    # the training defaults of every model (config/config.yaml, their one home), with the benchmark's own
    defaults = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())["train"]
    settings = {**defaults, "lr": 0.002, "warmup_updates": 400, "max_tokens": max_tokens, "max_update": updates,
                "max_epoch": 0, "log_interval": interval, "patience": -1, "extra_args": {}}
    spec = ModelSpec("bench", preset, criterion="word_kd" if teacher else "label_smoothed_cross_entropy",
                     alpha=0.5 if teacher else None, temperature=1.0 if teacher else None, train=settings)
    return [sys.executable, "-m", "fairseq_cli.train", str(data), "--task", "translation", *preset_args(preset),
            "--save-dir", str(save_dir), "--no-save", "--disable-validation", "--log-format", "json",
            "--user-dir", str(PLUGINS), "--cpu", *fairseq_train_args(spec, teacher or "")]


def time_updates(cmd: list[str], env_changes: dict[str, str | None], threads: int) -> tuple[float, int, float]:
    """Seconds between the first and last progress record, the updates between them, peak RSS in MiB."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    seen: list[tuple[float, int]] = []  # (time the record arrived, its update count)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        lines.append(line)
        if m := _RECORD.search(line):
            seen.append((time.monotonic(), int(json.loads(m.group(1))["num_updates"])))
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit("fairseq-train failed:\n" + "".join(lines)[-3000:])
    if len(seen) < 2:
        raise SystemExit("fewer than two progress records: raise --updates or lower --interval")
    (t0, u0), (t1, u1) = seen[0], seen[-1]
    return t1 - t0, u1 - u0, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="fairseq-binarised data (work/data/<dir>/bin)")
    parser.add_argument("--preset", default="student_deep_shallow")
    parser.add_argument("--teacher", help="teacher checkpoint: time word-KD updates instead of CE")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--interval", type=int, default=10, help="updates between fairseq's progress records")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=2, help="runs per variant, alternating")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    variants = {"glibc default": BASELINE, "allocator settings": ALLOCATOR_ENV}
    per_update: dict[str, list[float]] = {name: [] for name in variants}
    peak: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = train_command(args.data, Path(tmp), args.preset, args.updates, args.interval, args.max_tokens,
                            args.teacher)
        for rep in range(args.reps):
            for name, env in variants.items():
                seconds, updates, rss = time_updates(cmd, env, args.threads)
                per_update[name].append(seconds / updates)
                peak[name].append(rss)
                print(f"run {rep + 1} {name:>18}: {1000 * seconds / updates:8.1f} ms/update over {updates} updates, "
                      f"peak RSS {rss:,.0f} MiB", flush=True)
    base, tuned = (statistics.median(per_update[name]) for name in variants)
    what = "word-KD" if args.teacher else "CE"
    print(f"\n{args.preset}, {what} updates of {args.max_tokens} tokens, {args.threads} threads, median of {args.reps}:")
    print(f"  glibc default      {1000 * base:8.1f} ms/update")
    print(f"  allocator settings {1000 * tuned:8.1f} ms/update")
    print(f"  ratio with / without: {tuned / base:.3f}")


if __name__ == "__main__":
    main()
