"""Benchmark of bfloat16 autocast for CPU training: fairseq-train updates in float32 and with --amp, per model.

    python -m pipeline.benchmarks.cpu_bf16 --data work/data/<dir>/bin
    python -m pipeline.benchmarks.cpu_bf16 --data work/data/<dir>/bin --presets teacher_cpu_prenorm --reps 3

`train.cpu_bf16` (pipeline.train --cpu-bf16) trains with fairseq's --amp on a CPU with native bfloat16
(AVX512_BF16, AMX): the forward pass's matrix products run in bfloat16 (patch 14 of pipeline/build_fairseq.py),
weights, gradients and the optimizer stay float32. Whether that pays depends on the model: the products get
faster, and every one of them pays for casting its operands, which for narrow layers can cost more than it
saves. Measured side by side in one run: the real fairseq-train on the real binarised data, the same updates
(config/config.yaml's training settings, CE, pipeline.train's allocator settings), the two variants
alternating run by run; the time is the wall clock between fairseq's first and last progress records
(start-up excluded). The ratio printed is float32 / bfloat16: above 1, bfloat16 is faster. On a CPU without
native bfloat16 the benchmark still runs (bfloat16 is emulated there) and says so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from pipeline.benchmarks.train_allocator import time_updates, train_command
from pipeline.cpuinfo import cpu_has_native_bf16
from pipeline.train import ALLOCATOR_ENV

VARIANTS = {"float32": [], "bfloat16 autocast": ["--amp"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="fairseq-binarised data (work/data/<dir>/bin)")
    parser.add_argument("--presets", nargs="+", default=["teacher_cpu_prenorm", "student_deep_shallow_prenorm"])
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--interval", type=int, default=10, help="updates between fairseq's progress records")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=2, help="runs per variant, alternating")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    native = cpu_has_native_bf16()
    print(f"native bfloat16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo): {'yes' if native else 'no, emulated'}")
    medians: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            cmd = train_command(args.data, Path(tmp) / preset, preset, args.updates, args.interval, args.max_tokens,
                                None)
            per_update: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for rep in range(args.reps):
                for name, extra in VARIANTS.items():
                    seconds, updates, _ = time_updates(cmd + extra, ALLOCATOR_ENV, args.threads)
                    per_update[name].append(seconds / updates)
                    print(f"{preset} run {rep + 1} {name:>17}: {1000 * seconds / updates:8.1f} ms/update over "
                          f"{updates} updates", flush=True)
            medians[preset] = {name: statistics.median(times) for name, times in per_update.items()}
    print(f"\nCE updates of {args.max_tokens} tokens, {args.threads} threads, median of {args.reps}:")
    for preset, times in medians.items():
        fp32, bf16 = times["float32"], times["bfloat16 autocast"]
        print(f"  {preset:<30} float32 {1000 * fp32:8.1f} ms/update, bfloat16 autocast {1000 * bf16:8.1f} ms/update, "
              f"float32 / bfloat16 {fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
