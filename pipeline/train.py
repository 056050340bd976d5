"""Train one model with fairseq-train, resumably, then write its final checkpoint.

    python -m pipeline.train --data work/data/<dir>/bin --save-dir work/models/teacher-<key>/checkpoints \
        --output work/models/teacher-<key>/model.pt --preset teacher_cpu --metrics work/models/teacher-<key>/train.jsonl \
        [--best-metric loss|bleu] [--average-last N] [--fp16] [--cpu-bf16] -- FAIRSEQ_TRAIN_OPTIONS...

Training state lives in --save-dir, which no Snakemake rule declares: a killed or time-limited
job, rerun, continues from checkpoint_last.pt. A rerun resumes only the same run: --save-dir/run.json
records the model, the options, the training data and the teacher; when any of them changed (a new
preset, learning rate or criterion, redistilled data, a retrained teacher) the old directory is
moved to <save-dir>.previous and training starts from scratch. Options that only say how long to
train or how often to log, validate or save (CONTINUATION_OPTIONS) continue the run: fairseq's
learning-rate schedule and data order depend on the update count alone. The device is chosen here:
all visible GPUs (distributed training when there are several), else the CPU, with no change to the
options (a run may resume on another device). With --nodes/--tasks-per-node inside a Slurm job
(resources.train nodes, tasks: pipeline/launch.py) this process still runs once, and starts
fairseq-train under srun, once per task.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline import checkpoints, launch
from pipeline.cli import run
from pipeline.errors import DataError, ModelError
from pipeline.fetch import sha256
from pipeline.presets import preset_args

log = logging.getLogger("pipeline.train")
PLUGINS = Path(__file__).resolve().parent.parent / "fairseq_plugins"
# fairseq's json log lines: "... | INFO | train_inner | {...}" and "... | INFO | valid | {...}"
_PROGRESS = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
RUN_FILE = "run.json"
# Changing these continues the run in --save-dir instead of starting a new one: how long, how often,
# on which device, and where the code lives (value-less flags and options with one value alike).
CONTINUATION_OPTIONS = {
    "--max-epoch", "--max-update", "--patience", "--log-interval", "--validate-interval-updates",
    "--save-interval-updates", "--keep-last-epochs", "--keep-interval-updates", "--no-epoch-checkpoints",
    "--num-workers", "--cpu", "--fp16", "--amp", "--distributed-world-size", "--save-dir", "--user-dir",
    "--distributed-backend", "--distributed-port", "--tensorboard-logdir",
}
HASH_LIMIT = 256 * 2**20  # bigger files are identified by size and modification time, not content
# glibc settings for CPU training: keep freed large blocks on the heap for the next step instead of
# unmapping them and page-faulting them in again (pipeline.benchmarks.train_allocator measures it).
# A value already in the environment wins.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def device_args(fp16: bool, cpu_bf16: bool = False) -> list[str]:
    if not torch.cuda.is_available():
        return launch.cpu_args(cpu_bf16)
    n = torch.cuda.device_count()
    args = ["--fp16"] if fp16 else []
    if n > 1:
        args += ["--distributed-world-size", str(n)]
    return args


def best_metric_args(metric: str) -> list[str]:
    if metric == "loss":
        return ["--best-checkpoint-metric", "loss"]
    return [
        "--eval-bleu", "--eval-bleu-args", json.dumps({"beam": 1, "max_len_a": 1.2, "max_len_b": 10}),
        "--eval-bleu-detok", "space", "--eval-bleu-remove-bpe", "sentencepiece",
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    ]


def fairseq_command(args: argparse.Namespace, extra: list[str], devices: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(args.data), "--task", "translation"]
    cmd += preset_args(args.preset)
    cmd += ["--save-dir", str(args.save_dir), "--log-format", "json", "--user-dir", str(PLUGINS)]
    cmd += best_metric_args(args.best_metric)
    if args.average_last > 1:
        cmd += ["--keep-last-epochs", str(args.average_last), "--keep-interval-updates", str(args.average_last)]
    else:
        cmd += ["--no-epoch-checkpoints", "--keep-interval-updates", "1"]
    cmd += device_args(args.fp16, args.cpu_bf16) if devices is None else devices
    return cmd + extra


def file_identity(path: Path) -> str:
    """sha256 of the file's content, or its size and mtime when it is too big to hash at every start."""
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    return sha256(path)


def option_value(options: list[str], name: str) -> str | None:
    return options[options.index(name) + 1] if name in options and options.index(name) + 1 < len(options) else None


def run_identity(cmd: list[str], data: Path) -> dict[str, Any]:
    """What makes a run the same run: its options (less CONTINUATION_OPTIONS), data and teacher(s)."""
    options, rest, i = [], cmd[4:], 0  # cmd[:4]: interpreter, -m, module, data directory
    while i < len(rest):
        token = rest[i]
        takes_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
        if token not in CONTINUATION_OPTIONS:
            options += rest[i:i + 2] if takes_value else [token]
        i += 2 if takes_value else 1
    files = sorted(p for p in data.iterdir() if p.is_file() and p.name.split(".")[0] in ("dict", "train", "valid"))
    teachers = (option_value(cmd, "--teacher-path") or "").split(":")
    return {
        "options": options,
        "data": {p.name: file_identity(p) for p in files},
        "teachers": {t: file_identity(Path(t)) for t in teachers if t},
    }


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed between two run identities, in words for the log."""
    if old is None:
        return f"no {RUN_FILE} records its settings"
    found = []
    before, after = old.get("options", []), new["options"]
    if before != after:
        changed = [t for t in after if t.startswith("--") and option_value(after, t) != option_value(before, t)]
        changed += [t for t in before if t.startswith("--") and t not in after]
        found.append("options " + (", ".join(f"{t} {option_value(before, t)} -> {option_value(after, t)}"
                                              for t in dict.fromkeys(changed)) or "reordered"))
    if old.get("data") != new["data"]:
        found.append("training data")
    if old.get("teachers") != new["teachers"]:
        found.append("teacher checkpoint")
    return "; ".join(found)


def prepare_save_dir(save_dir: Path, identity: dict[str, Any], metrics: Path) -> dict | None:
    """Resume the same run, or set an earlier run aside (nothing is deleted but an older .previous); returns the
    training state it resumes from (None: from scratch)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    stamp = save_dir / RUN_FILE
    if (save_dir / "checkpoint_last.pt").exists():
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8")) if stamp.exists() else None
        except json.JSONDecodeError:
            previous = None
        if previous == identity:
            return report_resume(save_dir)
        backup = save_dir.with_name(save_dir.name + ".previous")
        if backup.exists():
            shutil.rmtree(backup)
        save_dir.rename(backup)
        if metrics.exists():
            metrics.rename(backup / "metrics.jsonl")
        log.warning("%s holds another run (changed: %s): moved to %s; training from scratch", save_dir,
                    differences(previous, identity), backup)
        save_dir.mkdir()
    else:
        metrics.unlink(missing_ok=True)  # records of a run killed before its first checkpoint
        log.info("no checkpoint in %s: training from scratch", save_dir)
    stamp.write_text(json.dumps(identity, indent=1) + "\n", encoding="utf-8")
    return None


def report_resume(save_dir: Path) -> dict:
    last = save_dir / "checkpoint_last.pt"
    try:
        state = checkpoints.load_training_state(last)
    except checkpoints.DamagedCheckpointError as damage:
        state = recover_last(last, damage)
    epoch = (state.get("extra_state") or {}).get("train_iterator", {}).get("epoch", "?")
    log.info("resuming from %s at update %d (epoch %s)", last, checkpoints.num_updates(state), epoch)
    return state


def _limit(cmd: list[str], option: str) -> float:
    """The value of fairseq-train's --max-update or --max-epoch in cmd (absent or 0: no limit)."""
    value = int(cmd[cmd.index(option) + 1]) if option in cmd else 0
    return value or math.inf


def trained_to_the_end(state: dict, cmd: list[str]) -> bool:
    """Whether the run resumed from `state` has reached its limits: its update count is --max-update, or the
    epoch it would start next is past --max-epoch. fairseq-train would still do one update past --max-update
    (it checks the limit after each update), so such a run is not restarted at all (a job killed between the
    last checkpoint and the model, or a finished run copied in by pipeline.settings continue)."""
    next_epoch = int((state.get("extra_state") or {}).get("train_iterator", {}).get("epoch", 0))
    return checkpoints.num_updates(state) >= _limit(cmd, "--max-update") or next_epoch > _limit(cmd, "--max-epoch")


def recover_last(last: Path, damage: checkpoints.DamagedCheckpointError) -> dict:
    """Put the newest readable checkpoint beside a damaged checkpoint_last.pt in its place; returns its state.

    fairseq writes checkpoint_last.pt as a copy of the interval, epoch or best checkpoint it has just
    saved, so a kill mid-copy leaves a truncated file beside an intact one. The damaged file is kept
    (hard-linked, else copied) as checkpoint_last.pt.damaged, then replaced atomically by a copy of the
    fallback: checkpoint_last.pt exists at every moment, so a kill during recovery is recovered the same way.
    """
    candidates = checkpoints.resume_candidates(last.parent)
    found = checkpoints.newest_readable(candidates)
    if found is None:
        others = f"{', '.join(p.name for p in candidates)} unreadable too" if candidates else "no other checkpoint"
        raise ModelError(f"{damage}; nothing to resume from in {last.parent} ({others}): "
                         "move the directory aside to train from scratch")
    source, state, skipped = found
    for message in skipped:
        log.warning("%s: not used", message)
    aside = last.with_name(last.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = last.with_name(f"{last.name}.damaged.{n}")
    try:
        os.link(last, aside)
    except OSError:  # a file system without hard links
        shutil.copyfile(last, aside)
    checkpoints.copy(source, last)
    log.warning("%s: kept as %s; resuming from %s instead (update %d)", damage, aside.name, source.name,
                checkpoints.num_updates(state))
    return state


def train_env(cmd: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """fairseq-train's environment: ALLOCATOR_ENV added when it trains on the CPU (unless already set)."""
    base = dict(os.environ) if base is None else base
    return {**ALLOCATOR_ENV, **base} if "--cpu" in cmd else dict(base)


def _die_with_parent() -> None:
    """In fairseq-train's process before exec: SIGTERM when this process dies, however it dies (SIGKILL too),
    so that a killed job never leaves training running on its own, writing checkpoints into a directory that
    the job's rerun resumes from at the same time. Linux's prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def train(cmd: list[str], metrics: Path, plan: launch.Launch | None = None) -> None:
    """Run fairseq-train (under srun: once per task), echoing its log and appending its progress records
    to the metrics file (rank 0 logs them)."""
    metrics.parent.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        cmd = plan.prefix + cmd
    log.info("%s", " ".join(cmd))
    env = train_env(cmd, None if plan is None else plan.env)
    log.info("allocator: %s", ", ".join(f"{k}={env[k]}" for k in ALLOCATOR_ENV if k in env) or "glibc defaults")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env, preexec_fn=_die_with_parent) as proc, \
            metrics.open("a", encoding="utf-8") as out:
        for line in proc.stdout:
            sys.stderr.write(line)
            if m := _PROGRESS.search(line):
                record = json.loads(m.group(2))
                record["phase"] = m.group(1)
                out.write(json.dumps(record) + "\n")
                out.flush()
    if proc.returncode != 0:
        raise SystemExit(f"fairseq-train failed with exit status {proc.returncode}")


def finalize(save_dir: Path, output: Path, average_last: int) -> None:
    if average_last > 1:
        paths = checkpoints.latest_checkpoints(save_dir, average_last)
        log.info("averaging %s", ", ".join(p.name for p in paths))
        state = checkpoints.average(paths)
    else:
        best = save_dir / "checkpoint_best.pt"
        state = checkpoints.load(best if best.exists() else save_dir / "checkpoint_last.pt")
    stripped = checkpoints.strip(state)
    # Absolute, so that decoding and `pipeline.translate` find the dictionaries from any directory.
    stripped["cfg"]["task"]["data"] = str(Path(stripped["cfg"]["task"]["data"]).resolve())
    checkpoints.save(stripped, output)
    log.info("wrote %s (update %d)", output, checkpoints.num_updates(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--save-dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="progress records (JSON lines), appended")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--best-metric", choices=["loss", "bleu"], default="loss")
    parser.add_argument("--average-last", type=int, default=0, help="average the last N checkpoints (0: best)")
    parser.add_argument("--fp16", action="store_true", help="mixed precision when training on GPU")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bfloat16 autocast when training on a CPU with native bfloat16 (elsewhere float32)")
    # several tasks (pipeline/launch.py): inside a Slurm job fairseq runs under srun, once per task
    parser.add_argument("--nodes", type=int, default=1, help="Slurm nodes (multi-task training)")
    parser.add_argument("--tasks-per-node", type=int, default=1, help="fairseq processes per node")
    parser.add_argument("--gpus-per-task", type=int, default=1, help="0: CPU tasks (gloo), 1: one GPU each")
    parser.add_argument("--threads-per-task", type=int, default=1, help="CPU cores per task")
    parser.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="after --: options for fairseq-train")
    args = parser.parse_args()
    extra = args.fairseq_args[1:] if args.fairseq_args[:1] == ["--"] else args.fairseq_args
    if not any(args.data.glob("dict.*.txt")):
        raise DataError(f"{args.data}: no binarised data (dict.*.txt missing)")
    topo = launch.Topology(args.nodes, args.tasks_per_node, args.gpus_per_task, args.gpus_per_task, args.threads_per_task)
    plan = launch.launch_plan(topo, fp16=args.fp16, cpu_bf16=args.cpu_bf16)
    if plan is not None:
        log.info("multi-task training: %s, under srun", launch.describe(topo))
    elif topo.multi_task:
        log.warning("%s requested outside a Slurm job: training as one task on this machine", launch.describe(topo))
    cmd = fairseq_command(args, extra, None if plan is None else plan.fairseq_args)
    resumed = prepare_save_dir(args.save_dir, run_identity(cmd, args.data), args.metrics)
    if resumed is not None and trained_to_the_end(resumed, cmd):
        log.info("the run has reached its end (update %d): no training, the model is written from its checkpoints",
                 checkpoints.num_updates(resumed))
    else:
        train(cmd, args.metrics, plan)
    finalize(args.save_dir, args.output, args.average_last)


if __name__ == "__main__":
    run(main)
