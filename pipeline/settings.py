"""Where each stage's outputs live: one directory per stage, keyed by exactly the settings that made them.

    layout = stage_layout(config)            # the merged, validated workflow config
    layout.data_dir                          # work/data/de-en-1a2b3c4d
    layout.model_dir("teacher")              # work/models/teacher-5e6f7a8b
    layout.data.settings                     # what work/data/<dir>/settings.json records

A stage's directory is a readable name plus its key: 8 hex digits of the SHA-256 of the canonical JSON
(sorted keys, no spaces) of the stage's settings. The settings hold the config values the stage's
outputs depend on and the keys of the stages it reads, so a changed setting changes the key of its
stage and of every stage after it, and of nothing before it: two experiments (config `experiment`)
that differ only in student settings share the data, the teacher and the distillation; a changed
distill.beam shares the data and the teacher and redistils. Settings that do not change a stage's
output (resources, threads, batch sizes of decoding, distill.shard_size, the fallback-share checks,
data.mirror) are left out: a changed one reruns the same directory's jobs through Snakemake's
parameter trigger instead of starting a new directory.

The keyed directories (pipeline/rules/common.smk derives every work/ path from them):
    work/data/<src>-<tgt>-<key>/           data stage (settings: src, tgt, data.*; an external teacher's files)
    work/models/<name>-<key>/              one per model: teachers, students, the ensemble's evaluation entry
    work/distill/<selection>_beam<N>-<key>/  the distilled corpus (settings: data key, teacher key, distill.*);
                                           bin/ binarised, bin+ref/ with the original pairs after it
                                           (distill.add_references: the students' and cache's settings say so)
    work/kdcache/<targets>-<key>/          a teacher cache (teacher model key, its data's key, kd_topk, shards)
    work/ct2/<name>-<key>/                 a model converted to CTranslate2 (model key, shortlist settings)
results/<experiment>/ holds an experiment's evaluations, training records, TensorBoard links and report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.models import ENSEMBLE, ModelSpec, model_specs, teacher_count

WORK, RESULTS = "work", "results"
METRICS = "train.jsonl"  # a model directory's progress records (pipeline.train --metrics)
KEY_LENGTH = 8  # hex digits of the SHA-256
# distill.* that do not change the distilled corpus (how it is cut into jobs, batched, or checked)
DISTILL_RUNTIME_KEYS = ("shard_size", "max_tokens", "batch_size", "max_fallback_share", "fail_fallback_share")
# distill.* that change only what is binarised from the distilled corpus: the settings of what trains on it
DISTILL_TRAINING_KEYS = ("add_references",)
TARGETS = ("reference", "distilled")  # a word-KD student's training data, and so a teacher cache's


# Training settings that continue a run instead of starting a new one (pipeline.train's CONTINUATION_OPTIONS):
# a model trained longer gets a directory of its own, which starts from the shorter run's checkpoints.
CONTINUATION_KEYS = ("max_epoch", "max_update", "patience", "log_interval", "validate_interval_updates",
                     "save_interval_updates", "fp16", "cpu_bf16")
LENGTH_KEYS = ("max_update", "max_epoch")  # 0: no limit


def canonical_json(settings: Any) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def settings_key(settings: Any) -> str:
    return hashlib.sha256(canonical_json(settings).encode("utf-8")).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Stage:
    """One keyed output directory: its readable name and the settings (what settings.json records)."""

    name: str
    settings: dict = field(hash=False)

    @property
    def key(self) -> str:
        return settings_key(self.settings)

    @property
    def dir(self) -> str:
        return f"{self.name}-{self.key}"

    def record(self) -> str:
        """settings.json: the key and the settings it hashes."""
        return json.dumps({"name": self.name, "key": self.key, "settings": self.settings}, indent=1, sort_keys=True)


def _without_continuation(settings: dict) -> dict:
    train = {key: value for key, value in settings["train"].items() if key not in CONTINUATION_KEYS}
    return {**settings, "train": train}


def _limits(settings: dict) -> tuple[float, ...]:
    return tuple(settings["train"][key] or float("inf") for key in LENGTH_KEYS)


def _seedless(settings: dict) -> dict:
    """The settings with the model's name less the seed that runs of several seeds add to it (student_baseline_s2:
    student_baseline; the seed itself is in train.seed): a run of students.seeds [1, 2] and one of [1] name the
    seed-1 student differently, and train the same model."""
    name, seed = settings.get("model"), (settings.get("train") or {}).get("seed")
    if isinstance(name, str) and seed is not None:
        return {**settings, "model": name.removesuffix(f"_s{seed}")}
    return settings


def continues(earlier: dict, later: dict) -> bool:
    """Whether a model trained with the settings `earlier` is an earlier point of the run `later` asks for:
    the same settings but for how long it trains and how often it logs, validates and saves, and limits
    (train.max_update, max_epoch) no higher than the later run's, so that the later run continues it. Model names
    are compared less their seed suffix: the same run under the other name of its seed (student_baseline of a
    one-seed run, student_baseline_s1 of a run of several) is its own end point, so the later run starts at its end."""
    if "train" not in earlier or "train" not in later or earlier == later:
        return False
    earlier, later = _seedless(earlier), _seedless(later)
    if _without_continuation(earlier) != _without_continuation(later):
        return False
    return all(a <= b for a, b in zip(_limits(earlier), _limits(later), strict=True))


def continue_run(model_dir: Path) -> Path | None:
    """Before a model trains in its new directory: the furthest earlier run of the same model (a sibling
    directory whose settings.json continues() into this one's, with a checkpoint) is copied in, checkpoints
    and progress records, so that pipeline.train resumes it; the earlier directory stays as it is (its
    experiments still use it). The same model under the other name of its seed (the seed-1 student of a one-seed
    run, student_baseline, when a run of several seeds asks for student_baseline_s1, and the other way round) is
    the furthest such run: the copy resumes at its end, and training only writes the model.
    Nothing happens when this directory has a checkpoint or there is no such run."""
    save_dir = model_dir / "checkpoints"
    if (save_dir / "checkpoint_last.pt").exists():
        return None
    own = json.loads((model_dir / "settings.json").read_text(encoding="utf-8"))
    stem = _seedless(own["settings"]).get("model", own["name"])
    candidates = []
    siblings = {*model_dir.parent.glob(f"{stem}-*/settings.json"), *model_dir.parent.glob(f"{stem}_s*-*/settings.json")}
    for path in sorted(siblings):
        other = path.parent
        if other == model_dir or not (other / "checkpoints" / "checkpoint_last.pt").exists():
            continue
        earlier = json.loads(path.read_text(encoding="utf-8"))["settings"]
        if continues(earlier, own["settings"]):
            candidates.append((_limits(earlier), other.name, other))
    if not candidates:
        return None
    source = max(candidates)[2]
    shutil.rmtree(save_dir, ignore_errors=True)
    shutil.copytree(source / "checkpoints", save_dir, symlinks=True)
    if (source / METRICS).exists():
        shutil.copy2(source / METRICS, model_dir / METRICS)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description="continue an earlier, shorter run of a model in its new directory")
    parser.add_argument("command", choices=["continue"])
    parser.add_argument("model_dir", type=Path, help="work/models/<name>-<key> (with its settings.json)")
    args = parser.parse_args()
    source = continue_run(args.model_dir)
    print(f"{args.model_dir}: continues {source}" if source else f"{args.model_dir}: no earlier run to continue")


def _file_entry(path: str, root: Path) -> dict[str, Any]:
    """A user's input file: its path as given and its size (None when missing: the stage says so)."""
    full = root / path
    return {"path": path, "bytes": full.stat().st_size if full.is_file() else None}


def _absolute(path: str | None, root: Path) -> str | None:
    return None if path is None else os.path.normpath(root / path)


def data_settings(config: dict, root: Path) -> dict:
    data = {key: value for key, value in config["data"].items() if key not in ("mirror", "files")}
    if data["source"] == "files":
        data["files"] = {split: {side: _file_entry(path, root) for side, path in pair.items()}
                         for split, pair in config["data"]["files"].items()}
    settings: dict[str, Any] = {"src": config["src"], "tgt": config["tgt"], "data": data}
    teacher = config["teacher"]
    if teacher["checkpoints"]:  # the data stage encodes with its SentencePiece model and binarises with its dictionary
        settings["teacher_vocabulary"] = {"checkpoints": [_absolute(p, root) for p in teacher["checkpoints"]],
                                          "spm": _absolute(teacher["spm"], root), "dict": _absolute(teacher["dict"], root)}
    return settings


def teacher_member_settings(spec: ModelSpec, data: Stage, checkpoint: str | None) -> dict:
    if checkpoint:  # an existing teacher, linked: its file is what it is
        return {"model": spec.name, "data": data.key, "checkpoint": checkpoint}
    return {"model": spec.name, "data": data.key, "preset": spec.preset, "train": spec.train}


def uses_kdcache(config: dict, spec: ModelSpec) -> bool:
    """A word-KD student reads the teacher cache when students.kd_cache is on; with an ensemble only at T = 1
    (the cache holds the members' average at T = 1; at another T the KL runs online)."""
    return (bool(config["students"]["kd_cache"]) and spec.uses_teacher
            and (teacher_count(config) == 1 or spec.temperature == 1.0))


def distill_settings(config: dict, data: Stage, teacher: Stage) -> dict:
    distill = {key: value for key, value in config["distill"].items()
               if key not in DISTILL_RUNTIME_KEYS + DISTILL_TRAINING_KEYS}
    settings = {"data": data.key, "teacher": teacher.key, "distill": distill}
    if distill["backend"] == "ctranslate2":
        ct2 = config["ct2"]
        settings["ct2"] = {"compute_type": ct2["compute_type"], "vmap": ct2["vmap"] if ct2["vmap"]["enabled"] else None}
    return settings


def distilled_training_settings(config: dict) -> dict:
    """What a model or cache on the distilled corpus adds to its settings: empty by default, so that a setting
    added here later keeps the keys of earlier runs."""
    return {"add_references": True} if config["distill"]["add_references"] else {}


def student_settings(config: dict, spec: ModelSpec, train_data: Stage, teacher: Stage,
                     kdcache: Stage | None) -> dict:
    settings: dict[str, Any] = {
        "model": spec.name, "data": train_data.key, "preset": spec.preset, "variant": spec.variant,
        "criterion": spec.criterion, "alpha": spec.alpha, "temperature": spec.temperature, "train": spec.train,
    }
    if spec.targets == "distilled":
        settings.update(distilled_training_settings(config))
    if spec.uses_teacher:
        settings.update(teacher=teacher.key, kd_topk=config["students"]["kd_topk"],
                        kdcache=kdcache.key if kdcache else None)
    return settings


@dataclass(frozen=True)
class Layout:
    """Every keyed stage of a config: the directories its work/ paths live in."""

    experiment: str
    specs: dict[str, ModelSpec]
    data: Stage
    teacher: Stage  # no directory of its own: its members' keys (or the CTranslate2 teacher's path)
    distill: Stage
    kdcache: dict[str, Stage]  # by training targets (reference, distilled)
    models: dict[str, Stage]  # every model of the roster, and the ensemble's evaluation entry
    ct2: dict[str, Stage]  # by model name
    add_references: bool = False  # distill.add_references: what trains on the distillation reads bin+ref/

    @property
    def data_dir(self) -> str:
        return f"{WORK}/data/{self.data.dir}"

    @property
    def distill_dir(self) -> str:
        return f"{WORK}/distill/{self.distill.dir}"

    @property
    def distill_bin(self) -> str:
        """The binarised training set of students on distilled targets (beside the real dev and test sets)."""
        return f"{self.distill_dir}/bin+ref" if self.add_references else f"{self.distill_dir}/bin"

    @property
    def results_dir(self) -> str:
        return f"{RESULTS}/{self.experiment}"

    def model_dir(self, name: str) -> str:
        return f"{WORK}/models/{self.models[name].dir}"

    def kdcache_dir(self, targets: str) -> str:
        return f"{WORK}/kdcache/{self.kdcache[targets].dir}"

    def ct2_dir(self, name: str) -> str:
        return f"{WORK}/ct2/{self.ct2[name].dir}"

    def train_data(self, name: str) -> Stage:
        """The stage whose binarised data a model trains on: the distillation's or the data stage's."""
        return self.distill if self.specs[name].targets == "distilled" else self.data

    def student_kdcache(self, name: str) -> Stage | None:
        return self.kdcache[self.specs[name].targets] if self.models[name].settings.get("kdcache") else None


def stage_layout(config: dict, root: str | Path = ".") -> Layout:
    """The keyed stages of a merged, validated config; root: where relative input paths are (the workdir)."""
    root = Path(root)
    specs = model_specs(config)
    data = Stage(f"{config['src']}-{config['tgt']}", data_settings(config, root))
    teacher_cfg = config["teacher"]
    external = [_absolute(path, root) for path in teacher_cfg["checkpoints"]]
    teachers = [spec for spec in specs.values() if spec.variant == "teacher"]
    models = {spec.name: Stage(spec.name, teacher_member_settings(spec, data, external[i] if external else None))
              for i, spec in enumerate(teachers)}
    if teacher_cfg["ct2_model"]:
        teacher = Stage("teacher", {"ct2_model": _absolute(teacher_cfg["ct2_model"], root)})
    else:
        teacher = Stage("teacher", {"members": [models[spec.name].key for spec in teachers]})
    if len(teachers) > 1:
        models[ENSEMBLE] = Stage(ENSEMBLE, {"teacher": teacher.key})
    distill_cfg = config["distill"]
    distill = Stage(f"{distill_cfg['selection']}_beam{distill_cfg['beam']}", distill_settings(config, data, teacher))
    # a cache is the teacher's: one model's (its key, as before ensembles could be cached) or the ensemble's
    kd_teacher = (teacher.key if len(teachers) > 1 else models[teachers[0].name].key) if teachers else None
    mixed = distill_cfg["add_references"]
    kdcache = {}
    for targets in TARGETS:
        settings = {"teacher": kd_teacher, "targets": targets, "data": (distill if targets == "distilled" else data).key,
                    "kd_topk": config["students"]["kd_topk"], "shards": config["students"]["kd_cache_shards"]}
        if targets == "distilled":
            settings.update(distilled_training_settings(config))
        kdcache[targets] = Stage(targets + ("+ref" if targets == "distilled" and mixed else ""), settings)
    for spec in specs.values():
        if spec.variant == "teacher":
            continue
        train_data = distill if spec.targets == "distilled" else data
        cache = kdcache[spec.targets] if uses_kdcache(config, spec) else None
        models[spec.name] = Stage(spec.name, student_settings(config, spec, train_data, teacher, cache))
    vmap = config["ct2"]["vmap"]
    ct2 = {name: Stage(name, {"model": models[name].key, "vmap": vmap if vmap["enabled"] else None})
           for name in specs}
    return Layout(config["experiment"], specs, data, teacher, distill, kdcache, models, ct2, add_references=mixed)


if __name__ == "__main__":
    from pipeline.cli import run

    run(main)
