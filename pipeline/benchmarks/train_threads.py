"""Benchmark of how CPU training jobs share cores: one job with every thread, or one job per core.

    python -m pipeline.benchmarks.train_threads --data work/data/<dir>/bin --preset student_deep_shallow
    python -m pipeline.benchmarks.train_threads --data work/data/<dir>/bin --preset teacher_cpu --updates 40

Snakemake runs jobs side by side when their threads fit `--cores`, so on a machine of N cores the
default config has a choice: each training job at N threads, one at a time, or N jobs at 1 thread each
(the baseline student beside the teacher, the distillation's shards in pairs). Side by side wins only
if a job at N threads is much less than N times as fast as at 1, and its jobs do not slow each other
(they share the caches and memory bandwidth). Measured in one run, the real fairseq-train on the real
binarised data for the same updates, each timed between fairseq's first and last progress records
(start-up excluded), with pipeline.train's allocator settings: (a) one job at N threads alone, (b) one
job at 1 thread alone, (c) N jobs at 1 thread at the same time. Printed: the speed-up of (a) over (b),
and the throughput of (c), in updates per second of all its jobs together, over (a)'s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.benchmarks.train_allocator import time_updates, train_command
from pipeline.train import ALLOCATOR_ENV


def side_by_side(commands: list[list[str]]) -> list[float]:
    """Seconds per update of each command, all started at once at 1 thread each."""
    with ThreadPoolExecutor(len(commands)) as pool:
        runs = list(pool.map(lambda cmd: time_updates(cmd, ALLOCATOR_ENV, 1), commands))
    return [seconds / updates for seconds, updates, _ in runs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="fairseq-binarised data (work/data/<dir>/bin)")
    parser.add_argument("--preset", default="student_deep_shallow")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--interval", type=int, default=10, help="updates between fairseq's progress records")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--cores", type=int, default=2, help="threads of the one job, and jobs side by side")
    parser.add_argument("--reps", type=int, default=2, help="rounds of (a), (b), (c)")
    args = parser.parse_args(argv)
    if args.cores < 2:
        parser.error("--cores must be at least 2: there is nothing to share on one core")
    together, alone, shared = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        commands = [train_command(args.data, Path(tmp) / str(job), args.preset, args.updates, args.interval,
                                  args.max_tokens, None) for job in range(args.cores)]
        for rep in range(args.reps):
            seconds, updates, _ = time_updates(commands[0], ALLOCATOR_ENV, args.cores)
            together.append(seconds / updates)
            seconds, updates, _ = time_updates(commands[0], ALLOCATOR_ENV, 1)
            alone.append(seconds / updates)
            per_job = side_by_side(commands)
            shared.append(max(per_job))  # the slowest job: when the round's work is done
            print(f"round {rep + 1}: {args.cores} threads {1000 * together[-1]:7.1f} ms/update, 1 thread alone "
                  f"{1000 * alone[-1]:7.1f}, {args.cores} jobs at 1 thread side by side "
                  + ", ".join(f"{1000 * s:7.1f}" for s in per_job), flush=True)
    a, b, c = (statistics.median(x) for x in (together, alone, shared))
    print(f"\n{args.preset}, CE updates of {args.max_tokens} tokens, median of {args.reps} rounds:")
    print(f"  1 job at {args.cores} threads      {1000 * a:8.1f} ms/update")
    print(f"  1 job at 1 thread        {1000 * b:8.1f} ms/update ({args.cores} threads' speed-up {b / a:.2f}x)")
    print(f"  {args.cores} jobs at 1 thread each {1000 * c:8.1f} ms/update per job")
    print(f"  throughput of {args.cores} jobs at 1 thread / 1 job at {args.cores} threads: {args.cores * a / c:.2f}")


if __name__ == "__main__":
    main()
