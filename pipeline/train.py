"""Train one model with fairseq-train, resumably, then write its final checkpoint.

    python -m pipeline.train --data work/data/bin --save-dir work/models/teacher/checkpoints \
        --output work/models/teacher/model.pt --preset teacher_cpu --metrics results/train/teacher.jsonl \
        [--best-metric loss|bleu] [--average-last N] [--fp16] -- FAIRSEQ_TRAIN_OPTIONS...

Training state lives in --save-dir, which no Snakemake rule declares: a killed or time-limited
job, rerun, continues from checkpoint_last.pt. The device is chosen here: all visible GPUs
(distributed training when there are several), else the CPU, with no change to the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import torch

from pipeline import checkpoints
from pipeline.cli import run
from pipeline.corpus import CorpusError
from pipeline.presets import preset_args

log = logging.getLogger("pipeline.train")
PLUGINS = Path(__file__).resolve().parent.parent / "fairseq_plugins"
# fairseq's json log lines: "... | INFO | train_inner | {...}" and "... | INFO | valid | {...}"
_PROGRESS = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")


def device_args(fp16: bool) -> list[str]:
    if not torch.cuda.is_available():
        return ["--cpu"]
    n = torch.cuda.device_count()
    args = ["--fp16"] if fp16 else []
    if n > 1:
        args += ["--distributed-world-size", str(n)]
    return args


def best_metric_args(metric: str, tgt_lang: str) -> list[str]:
    if metric == "loss":
        return ["--best-checkpoint-metric", "loss"]
    return [
        "--eval-bleu", "--eval-bleu-args", json.dumps({"beam": 1, "max_len_a": 1.2, "max_len_b": 10}),
        "--eval-bleu-detok", "space", "--eval-bleu-remove-bpe", "sentencepiece",
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    ]


def fairseq_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(args.data), "--task", "translation"]
    cmd += preset_args(args.preset)
    cmd += ["--save-dir", str(args.save_dir), "--log-format", "json", "--user-dir", str(PLUGINS)]
    cmd += best_metric_args(args.best_metric, args.tgt_lang)
    if args.average_last > 1:
        cmd += ["--keep-last-epochs", str(args.average_last), "--keep-interval-updates", str(args.average_last)]
    else:
        cmd += ["--no-epoch-checkpoints", "--keep-interval-updates", "1"]
    cmd += device_args(args.fp16)
    return cmd + extra


def report_resume(save_dir: Path) -> None:
    last = save_dir / "checkpoint_last.pt"
    if last.exists():
        state = checkpoints.load(last)
        epoch = (state.get("extra_state") or {}).get("train_iterator", {}).get("epoch", "?")
        log.info("resuming from %s at update %d (epoch %s)", last, checkpoints.num_updates(state), epoch)
    else:
        log.info("no checkpoint in %s: training from scratch", save_dir)


def train(cmd: list[str], metrics: Path) -> None:
    """Run fairseq-train, echoing its log and appending its progress records to the metrics file."""
    metrics.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s", " ".join(cmd))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, \
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
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--best-metric", choices=["loss", "bleu"], default="loss")
    parser.add_argument("--average-last", type=int, default=0, help="average the last N checkpoints (0: best)")
    parser.add_argument("--fp16", action="store_true", help="mixed precision when training on GPU")
    parser.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="after --: options for fairseq-train")
    args = parser.parse_args()
    extra = args.fairseq_args[1:] if args.fairseq_args[:1] == ["--"] else args.fairseq_args
    if not any(args.data.glob("dict.*.txt")):
        raise CorpusError(f"{args.data}: no binarised data (dict.*.txt missing)")
    args.save_dir.mkdir(parents=True, exist_ok=True)
    report_resume(args.save_dir)
    train(fairseq_command(args, extra), args.metrics)
    finalize(args.save_dir, args.output, args.average_last)


if __name__ == "__main__":
    run(main)
