"""Which models the config asks for, and the fairseq-train options each one gets.

The teacher and every student go through the same training rule; a ModelSpec says what differs:
architecture preset, training targets (references or the teacher's distilled output) and criterion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

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
        return self.criterion == "word_kd"


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
    """Every model of the run by name: the teacher, then one student per variant (x alpha x T for word-KD)."""
    defaults = config.get("train", {})
    teacher_cfg = config["teacher"]
    specs = {TEACHER: ModelSpec(TEACHER, teacher_cfg["preset"], train=merge(defaults, teacher_cfg.get("train")))}
    check_train_settings("teacher.train", specs[TEACHER].train)
    students = config.get("students") or {}
    student_train = merge(defaults, students.get("train"))
    if students.get("variants"):
        check_train_settings("students.train", student_train)
    for variant in students.get("variants", []):
        targets, criterion = VARIANTS[variant]
        if criterion == "word_kd":
            grid = list(product(students.get("alpha", [0.5]), students.get("temperature", [1.0])))
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
    if t.get("lr_scheduler", "inverse_sqrt") == "linear":
        return ["--lr-scheduler", "polynomial_decay", "--warmup-updates", warmup, "--power", "1",
                "--end-learning-rate", "0", "--total-num-update", str(t["max_update"])]
    return ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", warmup, "--warmup-init-lr", "1e-07"]


def check_train_settings(where: str, t: dict) -> None:
    """Settings the schema cannot check alone; `where` names the config key in the error."""
    if t.get("lr_scheduler") == "linear" and not t.get("max_update"):
        raise ValueError(f"config {where}.lr_scheduler: 'linear' decays to 0 at max_update; set {where}.max_update > 0")


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


def fairseq_train_args(spec: ModelSpec, teacher_checkpoint: str, kd_topk: int = 0) -> list[str]:
    """fairseq-train options from the spec's training settings (the architecture comes from its preset)."""
    t = spec.train
    args = [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", str(t.get("clip_norm", 0.0)),
        "--lr", str(t["lr"]), *lr_schedule_args(t), "--weight-decay", str(t.get("weight_decay", 0.0001)),
        "--max-tokens", str(t["max_tokens"]), "--update-freq", str(t.get("update_freq", 1)),
        "--seed", str(t.get("seed", 1)), "--patience", str(t.get("patience", -1)),
        "--log-interval", str(t.get("log_interval", 50)), "--num-workers", "0",
        "--criterion", spec.criterion, "--label-smoothing", str(t.get("label_smoothing", 0.1)),
    ]
    if t.get("max_epoch"):
        args += ["--max-epoch", str(t["max_epoch"])]
    if t.get("max_update"):
        args += ["--max-update", str(t["max_update"])]
    for key in ("validate_interval_updates", "save_interval_updates"):
        if t.get(key):
            args += [f"--{key.replace('_', '-')}", str(t[key])]
    if spec.uses_teacher:
        args += ["--teacher-path", teacher_checkpoint, "--kd-alpha", str(spec.alpha),
                 "--kd-temperature", str(spec.temperature), "--kd-topk", str(kd_topk)]
    return args + extra_args(t.get("extra_args", {}))
