"""Which models the config asks for, and the fairseq-train options each one gets.

The teacher and every student go through the same training rule; a ModelSpec says what differs:
architecture preset, training targets (references or the teacher's distilled output) and criterion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from pipeline.errors import ConfigError

VARIANTS = {
    # variant: (training targets, criterion)
    "baseline": ("reference", "label_smoothed_cross_entropy"),
    "word_kd": ("reference", "word_kd"),
    "seq_kd": ("distilled", "label_smoothed_cross_entropy"),
    "seq_word_kd": ("distilled", "word_kd"),
}
TEACHER = "teacher"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    preset: str
    targets: str = "reference"
    criterion: str = "label_smoothed_cross_entropy"
    variant: str = "teacher"
    alpha: float | None = None
    temperature: float | None = None
    train: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def uses_teacher(self) -> bool:
        """Trains against the teacher's distributions (word_kd): the teacher's checkpoint is an input."""
        return self.criterion == "word_kd"

    @property
    def learns_from_teacher(self) -> bool:
        """Word-level KD, or distilled targets: the teacher shaped this model."""
        return self.uses_teacher or self.targets == "distilled"


def merge(base: dict, override: dict | None) -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def student_name(variant: str, alpha: float | None = None, temperature: float | None = None) -> str:
    if alpha is None:
        return f"student_{variant}"
    return f"student_{variant}_a{alpha:g}_t{temperature:g}"


def model_specs(config: dict) -> dict[str, ModelSpec]:
    """Every model of the run by name: the teacher, then one student per variant (x alpha x T for word-KD).

    `config` is the validated workflow config (every key present: config/config.yaml holds the values);
    teacher.train and students.train are optional overrides of train.
    """
    defaults = config["train"]
    teacher_cfg = config["teacher"]
    specs = {TEACHER: ModelSpec(TEACHER, teacher_cfg["preset"], train=merge(defaults, teacher_cfg.get("train")))}
    check_train_settings("teacher.train", specs[TEACHER].train)
    students = config["students"]
    student_train = merge(defaults, students.get("train"))
    if students["variants"]:
        check_train_settings("students.train", student_train)
    for variant in students["variants"]:
        targets, criterion = VARIANTS[variant]
        if criterion == "word_kd":
            grid = list(product(students["alpha"], students["temperature"]))
        else:
            grid = [(None, None)]
        for alpha, temperature in grid:
            name = student_name(variant, alpha, temperature)
            specs[name] = ModelSpec(name, students["preset"], targets, criterion, variant, alpha, temperature, student_train)
    return specs


def lr_schedule_args(t: dict) -> list[str]:
    """inverse_sqrt (fairseq's Transformer default) or linear: warm-up, then straight down to 0 at max_update.

    A short run ends at a high learning rate under inverse_sqrt (still lr * sqrt(warmup / updates));
    linear decay anneals the last updates, which is what a budget of a few epochs needs.
    """
    warmup = str(t["warmup_updates"])
    if t["lr_scheduler"] == "linear":
        return ["--lr-scheduler", "polynomial_decay", "--warmup-updates", warmup, "--power", "1",
                "--end-learning-rate", "0", "--total-num-update", str(t["max_update"])]
    return ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", warmup, "--warmup-init-lr", "1e-07"]


def check_train_settings(where: str, t: dict) -> None:
    """Settings the schema cannot check alone; `where` names the config key in the error."""
    if t["lr_scheduler"] == "linear" and not t["max_update"]:
        raise ConfigError(f"config {where}.lr_scheduler: 'linear' decays to 0 at max_update; set {where}.max_update > 0")


def extra_args(options: dict) -> list[str]:
    """A map of fairseq-train options, passed through untouched: {"--clip-norm": 0.1, "--fp16-no-flatten-grads": true}."""
    args: list[str] = []
    for key, value in options.items():
        flag = key if key.startswith("--") else f"--{key}"
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    return args


def fairseq_train_args(spec: ModelSpec, teacher_checkpoint: str, kd_topk: int = 0, kd_cache: str | None = None) -> list[str]:
    """fairseq-train options from the spec's training settings (the architecture comes from its preset).

    kd_cache: a word-KD student reads the teacher's top-K from this cache directory (pipeline.kdcache)
    instead of running the teacher; the teacher's checkpoint is still named, for the cache's guard.
    """
    t = spec.train
    args = [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", str(t["clip_norm"]),
        "--lr", str(t["lr"]), *lr_schedule_args(t), "--weight-decay", str(t["weight_decay"]),
        "--max-tokens", str(t["max_tokens"]), "--update-freq", str(t["update_freq"]),
        "--seed", str(t["seed"]), "--patience", str(t["patience"]),
        "--log-interval", str(t["log_interval"]), "--num-workers", "0",
        "--criterion", spec.criterion, "--label-smoothing", str(t["label_smoothing"]),
    ]
    if t["max_epoch"]:
        args += ["--max-epoch", str(t["max_epoch"])]
    if t["max_update"]:
        args += ["--max-update", str(t["max_update"])]
    for key in ("validate_interval_updates", "save_interval_updates"):
        if t[key]:
            args += [f"--{key.replace('_', '-')}", str(t[key])]
    if spec.uses_teacher:
        args += ["--teacher-path", teacher_checkpoint, "--kd-alpha", str(spec.alpha),
                 "--kd-temperature", str(spec.temperature), "--kd-topk", str(kd_topk)]
        if kd_cache:
            args += ["--kd-teacher-cache", kd_cache]
    return args + extra_args(t["extra_args"])


def model_record(spec: ModelSpec, *, src: str, tgt: str, spm: str, train_data: str) -> dict[str, Any]:
    """What work/models/<name>/spec.json says about a model: its settings, the data and vocabulary it needs.

    Evaluation copies it into its JSON (key "spec") and the report reads variant, alpha and
    temperature from there, never from the model's name.
    """
    return {
        "name": spec.name,
        "variant": spec.variant,
        "preset": spec.preset,
        "alpha": spec.alpha,
        "temperature": spec.temperature,
        "seed": spec.train["seed"],
        "teacher": TEACHER if spec.learns_from_teacher else None,
        "targets": spec.targets,
        "criterion": spec.criterion,
        "train_data": train_data,
        "spm": spm,
        "src": src,
        "tgt": tgt,
    }


def model_records(specs: dict[str, ModelSpec], *, src: str, tgt: str, spm: str,
                  data_dir: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """model_record of every model by name; data_dir(name) is the binarised data it trains on."""
    return {name: model_record(spec, src=src, tgt=tgt, spm=spm, train_data=data_dir(name)) for name, spec in specs.items()}
