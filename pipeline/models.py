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
TEACHER = "teacher"  # the teacher, and the first member of an ensemble
ENSEMBLE = "teacher_ensemble"  # the evaluation entry of an ensemble of teachers (variant and name)


def teacher_names(count: int) -> list[str]:
    """The teachers of an ensemble of `count`: teacher, teacher_2, ..., teacher_N (one: just teacher)."""
    return [TEACHER] + [f"{TEACHER}_{i}" for i in range(2, count + 1)] if count else []


def teacher_count(config: dict) -> int:
    """How many fairseq teachers the run has: the external checkpoints, none for a CTranslate2 teacher, else teacher.ensemble."""
    teacher_cfg = config["teacher"]
    if teacher_cfg["ct2_model"]:
        return 0
    return len(teacher_cfg["checkpoints"]) or teacher_cfg["ensemble"]


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


def student_name(variant: str, alpha: float | None = None, temperature: float | None = None,
                 seed: int | None = None) -> str:
    """student_<variant>[_a<alpha>_t<T>][_s<seed>]: the seed only when the run trains several (seed None)."""
    name = f"student_{variant}" if alpha is None else f"student_{variant}_a{alpha:g}_t{temperature:g}"
    return name if seed is None else f"{name}_s{seed}"


def student_seeds(students: dict, student_train: dict) -> list[int]:
    """students.seeds; a config without the key (a partial one, built by hand) trains with students' train.seed."""
    if "seeds" not in students:
        return [student_train["seed"]]
    if "seed" in (students.get("train") or {}):
        raise ConfigError("config students.train.seed: the students' seeds are students.seeds "
                          f"(e.g. seeds: [{students['train']['seed']}]); remove students.train.seed")
    return list(students["seeds"])


def model_specs(config: dict) -> dict[str, ModelSpec]:
    """Every model of the run by name: the teacher(s), then one student per variant (x alpha x T for word-KD)
    and per seed of students.seeds (fairseq --seed; the teachers keep train.seed and its successors).

    Teachers: teacher.ensemble of them (teacher, teacher_2, ...), or one per teacher.checkpoints entry
    (not trained: imported), or none for a CTranslate2 teacher (teacher.ct2_model, decoding only).

    `config` is the validated workflow config (every key present: config/config.yaml holds the values);
    teacher.train and students.train are optional overrides of train, students.variant_train.<variant> of
    students.train for that variant's students (settings chosen per variant on dev). Names carry the seed only
    when there are several (student_baseline_s2); spec.json always records it.
    """
    defaults = config["train"]
    teacher_cfg = config["teacher"]
    teacher_train = merge(defaults, teacher_cfg.get("train"))
    check_train_settings("teacher.train", teacher_train)
    # ensemble members differ in seed only (the first keeps the configured seed: one teacher is today's)
    specs = {name: ModelSpec(name, teacher_cfg["preset"], train={**teacher_train, "seed": teacher_train["seed"] + i})
             for i, name in enumerate(teacher_names(teacher_count(config)))}
    students = config["students"]
    student_train = merge(defaults, students.get("train"))
    if students["variants"]:
        check_train_settings("students.train", student_train)
    seeds = student_seeds(students, student_train)
    per_variant = students.get("variant_train") or {}  # its keys are variants (the schema checks)
    for variant in students["variants"]:
        targets, criterion = VARIANTS[variant]
        variant_train = merge(student_train, per_variant.get(variant))
        if variant in per_variant:
            check_train_settings(f"students.variant_train.{variant}", variant_train)
        if criterion == "word_kd":
            grid = list(product(students["alpha"], students["temperature"]))
        else:
            grid = [(None, None)]
        for (alpha, temperature), seed in product(grid, seeds):
            name = student_name(variant, alpha, temperature, seed if len(seeds) > 1 else None)
            specs[name] = ModelSpec(name, students["preset"], targets, criterion, variant, alpha, temperature,
                                    {**variant_train, "seed": seed})
    return specs


def lr_schedule_args(t: dict) -> list[str]:
    """inverse_sqrt (fairseq's Transformer default) or linear: warm-up, then straight down to 0 at max_update.

    A short run ends at a high learning rate under inverse_sqrt (still lr * sqrt(warmup / updates));
    linear decay anneals the last updates, but takes smaller steps all along: a model still learning fast
    at the end of its budget (the demo's students: docs/results.md) does better under inverse_sqrt.
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
    """A map of fairseq-train options, passed through untouched: {"--clip-norm": 0.1, "--fp16-no-flatten-grads": true}.

    true: the bare flag; false or null: left out; any other value, 0 included, follows its flag.
    """
    args: list[str] = []
    for key, value in options.items():
        flag = key if key.startswith("--") else f"--{key}"
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:  # not `in (False, None)`: 0 == False would drop --dropout 0
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


def model_record(spec: ModelSpec, *, src: str, tgt: str, spm: str, train_data: str, teacher: str = TEACHER) -> dict[str, Any]:
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
        "teacher": teacher if spec.learns_from_teacher else None,
        "targets": spec.targets,
        "criterion": spec.criterion,
        "train_data": train_data,
        "spm": spm,
        "src": src,
        "tgt": tgt,
    }


def model_records(specs: dict[str, ModelSpec], *, src: str, tgt: str, spm: str,
                  data_dir: Callable[[str], str], teacher: str = TEACHER) -> dict[str, dict[str, Any]]:
    """model_record of every model by name; data_dir(name) is the binarised data it trains on; teacher: what
    the students learn from (teacher, teacher_ensemble, or the CTranslate2 teacher's directory)."""
    return {name: model_record(spec, src=src, tgt=tgt, spm=spm, train_data=data_dir(name), teacher=teacher)
            for name, spec in specs.items()}
