"""Loading a fairseq checkpoint for inference: the checkpoint file, its dictionaries, languages, plugins, device.

    lm = load_model(Path("work/models/teacher-<key>/model.pt"))   # on CUDA when present
    lm = load_model("work/models/teacher-<key>/model.pt:work/models/teacher_2-<key>/model.pt")  # an ensemble (fairseq's syntax)
    find_spm(lm)                                            # the SentencePiece model it was trained with

Used by the fairseq backend (pipeline.decoding.fairseq_backend), the conversion to CTranslate2
(pipeline.decoding.convert) and pipeline.model_size.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.decoding.device import pick_device
from pipeline.errors import ModelError

log = logging.getLogger("pipeline.decoding.fairseq_model")

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "fairseq_plugins"


@dataclass
class LoadedModel:
    """A model ready for inference, with its task (dictionaries) and where it runs."""

    path: Path
    model: Any  # fairseq.models.FairseqEncoderDecoderModel
    task: Any  # fairseq.tasks.FairseqTask
    cfg: Any  # the checkpoint's (omegaconf) config
    data_dir: Path
    device: torch.device
    fp16: bool
    # an ensemble: every member (model is the first), decoded together by fairseq's SequenceGenerator,
    # which averages the members' probabilities per step; one model: [model]
    members: list[Any] = field(default_factory=list)
    member_paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members = self.members or [self.model]
        self.member_paths = self.member_paths or [self.path]

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def source_lang(self) -> str:
        return self.task.cfg.source_lang

    @property
    def target_lang(self) -> str:
        return self.task.cfg.target_lang

    def describe_device(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"


def _has_dicts(path: Path) -> bool:
    return path.is_dir() and any(path.glob("dict.*.txt"))


def resolve_data_dir(checkpoint: Path, cfg_data: str | None, override: str | os.PathLike | None = None) -> Path:
    """The directory with the fairseq dictionaries the model was trained with.

    Tried in order: an explicit override; the checkpoint's own directory (a self-contained model
    directory); the training data path stored in the checkpoint, as given, then relative to each
    directory above the checkpoint (so work/models/X/model.pt finds a relative work/data/<dir>/bin).
    """
    if override is not None:
        path = Path(override)
        if not _has_dicts(path):
            raise ModelError(f"--data {path}: no fairseq dictionaries (dict.*.txt) there")
        return path
    candidates = [checkpoint.parent]
    if cfg_data:
        stored = Path(str(cfg_data).split(os.pathsep)[0])
        candidates.append(stored)
        if not stored.is_absolute():
            candidates += [parent / stored for parent in checkpoint.resolve().parents]
    for path in candidates:
        if _has_dicts(path):
            return path
    raise ModelError(
        f"{checkpoint}: cannot find the model's dictionaries (dict.*.txt): the training data directory "
        f"stored in the checkpoint ({cfg_data}) does not exist here; pass --data DIR (e.g. work/data/<dir>/bin)"
    )


def _import_user_dir(user_dir: str | None) -> None:
    """Import the plugin package a checkpoint was trained with (our fairseq_plugins), if any.

    Only custom tasks/models matter for decoding; a training-only plugin (e.g. a criterion) that
    fails to import is reported and ignored.
    """
    if not user_dir:
        return
    try:
        if Path(user_dir).name == PLUGINS.name:
            importlib.import_module(PLUGINS.name)  # the repository root is on sys.path (PYTHONPATH)
        else:
            from argparse import Namespace

            from fairseq import utils

            utils.import_user_module(Namespace(user_dir=user_dir))
    except Exception as err:  # decoding rarely needs the plugin; say so and go on
        log.warning("could not import the checkpoint's --user-dir %s (%s); continuing without it", user_dir, err)


def _infer_langs(data_dir: Path) -> tuple[str | None, str | None]:
    for path in sorted(data_dir.iterdir()):
        parts = path.name.split(".")
        if len(parts) >= 3 and len(parts[1].split("-")) == 2:
            src, tgt = parts[1].split("-")
            return src, tgt
    return None, None


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file (a model directory means its model.pt), or a clear error."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ModelError(f"{path}: a directory without model.pt (give the checkpoint file)")
        path = path / "model.pt"
    if not path.is_file():
        hint = f" (train it first: `snakemake {path}`)" if re.fullmatch(r"work/models/[^/]+/model\.pt", str(path)) else ""
        raise ModelError(f"{path}: no such model checkpoint{hint}")
    return path


def read_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """fairseq's checkpoint loader (config upgraded), with a clear error for a missing or unreadable file."""
    from fairseq import checkpoint_utils

    path = checkpoint_file(checkpoint)
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    except Exception as err:  # torch/pickle raise many types for a bad file
        raise ModelError(f"{path}: not a readable fairseq checkpoint ({type(err).__name__}: {err})") from None
    if state.get("cfg") is None or "model" not in state:
        raise ModelError(f"{path}: not a fairseq checkpoint (no model weights and config)")
    return state


def load_model(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    src: str | None = None,
    tgt: str | None = None,
    cpu: bool = False,
    fp16: bool = False,
) -> LoadedModel:
    """Load a fairseq checkpoint for inference (eval mode, on CUDA when available; fp16 only on CUDA).

    Several checkpoints joined by ':' (fairseq's ensemble syntax) load as one ensemble: every member
    must have the same dictionaries (ModelError naming the checkpoints otherwise).
    Training-only state (optimizer, criterion) is ignored. data_dir defaults to the dictionaries
    found by resolve_data_dir; src/tgt default to the checkpoint's languages or the data dir's.
    """
    from fairseq import checkpoint_utils
    from fairseq.dataclass.utils import overwrite_args_by_name

    if os.pathsep in str(checkpoint):
        return load_ensemble(str(checkpoint).split(os.pathsep), data_dir=data_dir, src=src, tgt=tgt, cpu=cpu, fp16=fp16)
    path = checkpoint_file(checkpoint)
    state = read_checkpoint(path)
    cfg = state["cfg"]
    _import_user_dir(cfg.common.get("user_dir") if "common" in cfg else None)
    data = resolve_data_dir(path, cfg.task.get("data"), data_dir)
    overrides: dict[str, Any] = {"data": str(data)}
    ckpt_src, ckpt_tgt = cfg.task.get("source_lang"), cfg.task.get("target_lang")
    inferred = _infer_langs(data)
    src = src or ckpt_src or inferred[0]
    tgt = tgt or ckpt_tgt or inferred[1]
    if src is None or tgt is None:
        raise ModelError(f"{path}: the checkpoint does not name its languages and {data} holds no binarised "
                          "split to infer them from: pass --src and --tgt")
    for lang in (src, tgt):
        if not (data / f"dict.{lang}.txt").is_file():
            raise ModelError(f"{data}/dict.{lang}.txt: no such dictionary (languages {src}->{tgt})")
    overrides.update(source_lang=src, target_lang=tgt)
    overwrite_args_by_name(cfg, overrides)
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    except (RuntimeError, KeyError) as err:
        raise ModelError(f"{path}: cannot build the model from the checkpoint ({err})") from None
    model = models[0]
    device = torch.device(pick_device(cpu, torch.cuda.device_count))
    if fp16 and device.type != "cuda":
        log.warning("fp16 requested but decoding on CPU: using fp32")
        fp16 = False
    if fp16:
        model.half()
    model.to(device).eval()
    log.info("loaded %s (%s->%s, dictionaries %s) on %s%s", path, src, tgt, data, device, " fp16" if fp16 else "")
    return LoadedModel(path=path, model=model, task=task, cfg=cfg, data_dir=data, device=device, fp16=fp16)


def load_ensemble(checkpoints: list[str], data_dir: str | os.PathLike | None = None, src: str | None = None,
                  tgt: str | None = None, cpu: bool = False, fp16: bool = False) -> LoadedModel:
    """Several checkpoints as one model for decoding (the first one's task, dictionaries and spm)."""
    loaded = [load_model(path, data_dir=data_dir, src=src, tgt=tgt, cpu=cpu, fp16=fp16) for path in checkpoints if path]
    first = loaded[0]
    for other in loaded[1:]:
        for side in ("source_dictionary", "target_dictionary"):
            if getattr(other.task, side).symbols != getattr(first.task, side).symbols:
                raise ModelError(f"{other.path}: its dictionaries ({other.data_dir}) differ from {first.path}'s "
                                 f"({first.data_dir}): an ensemble needs one vocabulary")
        if (other.source_lang, other.target_lang) != (first.source_lang, first.target_lang):
            raise ModelError(f"{other.path} translates {other.source_lang}->{other.target_lang}, {first.path} "
                             f"{first.source_lang}->{first.target_lang}: not one ensemble")
    log.info("ensemble of %d models: %s", len(loaded), ", ".join(str(lm.path) for lm in loaded))
    return LoadedModel(path=first.path, model=first.model, task=first.task, cfg=first.cfg, data_dir=first.data_dir,
                       device=first.device, fp16=first.fp16, members=[lm.model for lm in loaded],
                       member_paths=[lm.path for lm in loaded])


def find_spm(lm: LoadedModel, override: str | os.PathLike | None = None) -> Path:
    """The SentencePiece model: explicit, next to the checkpoint, or the data stage's (bin/../spm)."""
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise ModelError(f"--spm {path}: no such SentencePiece model")
        return path
    candidates = [lm.path.parent / "spm.model", lm.data_dir.parent / "spm" / "spm.model", lm.data_dir / "spm.model"]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelError(
        f"cannot find the SentencePiece model (looked at {', '.join(map(str, candidates))}): pass --spm PATH"
    )
