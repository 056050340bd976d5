"""Where a CPU training update spends its time: torch.profiler over real fairseq-train updates, by operator group.

    python -m pipeline.benchmarks.train_profile --data work/data/<dir>/bin --preset student_deep_shallow_prenorm
    python -m pipeline.benchmarks.train_profile --data work/data/<dir>/bin --preset teacher_cpu_prenorm

The default run's time is mostly training, so whether it can get faster without fewer updates depends on what
an update is made of: matrix products run near the CPU's peak and only fewer or smaller ones save time; anything
else (random dropout masks, optimizer bookkeeping, copies) is overhead an implementation could cut. The real
fairseq-train (train_allocator.train_command: the preset, config/config.yaml's training settings, CE updates; its
allocator settings and threads) runs in a child process whose Trainer.train_step is hooked to profile the updates
after the first --skip (warm-up excluded). Printed: the profiled updates' wall-clock time per update, the share of it
spent in ATen operators (the rest: Python, autograd's and fairseq's bookkeeping, data loading), and each operator
group's share of the operators' time (self time, so nothing is counted twice).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.benchmarks.train_allocator import train_command
from pipeline.train import ALLOCATOR_ENV

# Operator groups, first match wins: "aten::" patterns match a name exactly, the others any name containing them
# (the attention kernels' names vary with the PyTorch version); an operator in none of them is "other".
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("dropout masks", ("aten::bernoulli_",)),
    ("attention kernels", ("scaled_dot_product", "flash_attention")),
    ("softmax", ("softmax",)),
    ("layer norm", ("layer_norm",)),
]


def group_of(op: str) -> str:
    for group, patterns in GROUPS:
        if any(op == p or (not p.startswith("aten::") and p in op) for p in patterns):
            return group
    return "other"


def group_shares(ops: dict[str, float]) -> dict[str, float]:
    """Each group's share (0..1) of the operators' self CPU time; every group present, in GROUPS' order."""
    totals = {group: 0.0 for group, _ in GROUPS} | {"other": 0.0}
    for op, micros in ops.items():
        totals[group_of(op)] += micros
    whole = sum(totals.values())
    if whole <= 0:
        raise SystemExit("the profiler recorded no operator time")
    return {group: t / whole for group, t in totals.items()}


def child(skip: int, updates: int, out: Path, fairseq_args: list[str]) -> None:
    """Run fairseq-train in this process, profiling train_step calls skip+1 .. skip+updates; write the result."""
    import torch
    from fairseq import trainer

    step = trainer.Trainer.train_step
    state: dict = {"calls": 0}

    def profiled_step(self, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == skip + 1:
            state["profile"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            state["profile"].__enter__()
            state["start"] = time.perf_counter()
        result = step(self, *args, **kwargs)
        if state["calls"] == skip + updates:
            seconds = time.perf_counter() - state["start"]
            state["profile"].__exit__(None, None, None)
            ops = {e.key: e.self_cpu_time_total for e in state["profile"].key_averages() if e.key.startswith("aten::")}
            out.write_text(json.dumps({"seconds": seconds, "updates": updates, "ops": ops}))
        return result

    trainer.Trainer.train_step = profiled_step
    from fairseq_cli.train import cli_main
    sys.argv = ["fairseq-train", *fairseq_args]
    cli_main()


def profile(data: Path, preset: str, max_tokens: int, threads: int, skip: int, updates: int) -> dict:
    """The child's result: {seconds, updates, ops: {operator: self CPU microseconds}}."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = train_command(data, Path(tmp) / "ckpt", preset, skip + updates, max(1, updates), max_tokens, None)
        out = Path(tmp) / "profile.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **ALLOCATOR_ENV)
        proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.train_profile", "--child", str(out),
                               "--skip", str(skip), "--updates", str(updates), "--", *cmd[3:]],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit("fairseq-train failed:\n" + (proc.stdout + proc.stderr)[-3000:])
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="fairseq-binarised data (work/data/<dir>/bin)")
    parser.add_argument("--preset", default="student_deep_shallow_prenorm")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", type=int, default=20, help="updates before the profiled ones (warm-up)")
    parser.add_argument("--updates", type=int, default=40, help="updates profiled")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        child(args.skip, args.updates, args.child, rest[1:] if rest[:1] == ["--"] else rest)
        return
    if args.data is None:
        parser.error("--data is required")
    if args.skip < 1 or args.updates < 1:
        parser.error("--skip and --updates must be at least 1")
    result = profile(args.data, args.preset, args.max_tokens, args.threads, args.skip, args.updates)
    print(f"{args.preset}, CE updates of {args.max_tokens} tokens, {args.threads} thread{'s' if args.threads > 1 else ''}: "
          f"{1000 * result['seconds'] / result['updates']:.1f} ms/update over {result['updates']} updates "
          f"(after {args.skip}), {100 * sum(result['ops'].values()) / 1e6 / result['seconds']:.0f}% of it in operators")
    for group, share in group_shares(result["ops"]).items():
        print(f"  {group:<18} {100 * share:5.1f}%")
    top = sorted(result["ops"].items(), key=lambda kv: -kv[1])[:8]
    print("largest operators: " + ", ".join(f"{op} {micros / 1000 / result['updates']:.1f} ms/update"
                                            for op, micros in top))


if __name__ == "__main__":
    main()
