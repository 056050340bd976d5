"""Checkpoint handling that fairseq's pip package lacks: averaging, stripping, picking the final model.

fairseq's scripts/average_checkpoints.py is not in the pip package (and fails on torch 2.13 as
shipped: torch.load's weights_only default), so this is our own small implementation.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from pipeline.errors import ModelError

# Attributes of fairseq 0.12.2's TransformerEncoderLayerBase that duplicate its real weights
# (self_attn.{q,k,v,out}_proj, fc1, fc2) for the BetterTransformer path; unused in training and
# in our (patched) inference; rebuilt from the real weights by _load_from_state_dict.
FASTPATH_COPIES = (
    "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
    "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
)
_EPOCH = re.compile(r"checkpoint(\d+)\.pt$")
_UPDATE = re.compile(r"checkpoint_(\d+)_(\d+)\.pt$")


class DamagedCheckpointError(ModelError):
    """The file is there but torch cannot read it: truncated (a killed copy), overwritten or not a checkpoint."""


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception's first line (torch appends a paragraph about miniz)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def load(path: str | os.PathLike) -> dict:
    """torch.load a checkpoint on the CPU; any failure is a ModelError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (PermissionError, IsADirectoryError) as exc:
        raise ModelError(f"{path}: cannot read the checkpoint ({exc.strerror})") from exc
    # What torch.load raises for a truncated or overwritten file: the zip reader (RuntimeError), the
    # legacy-format probe (EOFError, OSError, ValueError) and the unpickler.
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise DamagedCheckpointError(f"{path}: damaged or truncated checkpoint ({_reason(exc)})") from exc
    except Exception as exc:
        # torch.save has written zip archives since torch 1.6: a file that is not one was overwritten or
        # cut short, and the unpickler's error on its bytes (OverflowError, MemoryError...) means nothing.
        if not zipfile.is_zipfile(path):
            raise DamagedCheckpointError(f"{path}: damaged or truncated checkpoint ({_reason(exc)})") from exc
        # A whole archive that still fails: e.g. a class the pickle names that cannot be imported here.
        raise ModelError(f"{path}: cannot load the checkpoint ({type(exc).__name__}: {_reason(exc)})") from exc


def load_training_state(path: str | os.PathLike) -> dict:
    """load, and check that the file holds what fairseq resumes from (a dict with the model's weights)."""
    state = load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise DamagedCheckpointError(f"{path}: not a fairseq training checkpoint (no model weights)")
    return state


def num_updates(state: dict) -> int:
    history = state.get("optimizer_history") or [{}]
    return int(history[-1].get("num_updates", 0))


def latest_checkpoints(save_dir: Path, n: int) -> list[Path]:
    """The n most recent numbered checkpoints: by update count if saved by updates, else by epoch."""
    by_update = sorted(
        (int(m.group(2)), p) for p in save_dir.glob("checkpoint_*_*.pt") if (m := _UPDATE.search(p.name))
    )
    by_epoch = sorted((int(m.group(1)), p) for p in save_dir.glob("checkpoint*.pt") if (m := _EPOCH.search(p.name)))
    found = [p for _, p in (by_update or by_epoch)]
    if len(found) < n:
        raise ModelError(f"{save_dir}: averaging needs {n} numbered checkpoints, found {len(found)}")
    return found[-n:]


def average(paths: list[Path]) -> dict:
    """Mean of the models' parameters; every other field comes from the last checkpoint."""
    states = [load(p) for p in paths]
    params: OrderedDict[str, torch.Tensor] = OrderedDict()
    # Tied weights (shared embeddings and output projection) are one tensor in a checkpoint; their
    # average must be one tensor too, or the saved model holds a copy per name (+50% for a student).
    tied: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    for key, value in states[-1]["model"].items():
        if value.is_floating_point():
            tie = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if tie not in tied:
                total = sum(s["model"][key].to(torch.float64) for s in states)
                tied[tie] = (total / len(states)).to(value.dtype)
            params[key] = tied[tie]
        else:
            params[key] = value
    averaged = dict(states[-1])
    averaged["model"] = params
    averaged.setdefault("extra_state", {})
    averaged["extra_state"] = {**averaged["extra_state"], "averaged_from": [p.name for p in paths]}
    return averaged


def fastpath_copies(state_dict: dict) -> list[str]:
    """Keys of a model state dict that only hold fast-path copies (an encoder layer's, beside its self_attn)."""
    keys = []
    for key in state_dict:
        prefix, _, name = key.rpartition(".")
        if name in FASTPATH_COPIES and f"{prefix}.self_attn.q_proj.weight" in state_dict:
            keys.append(key)
    return keys


def strip(state: dict, keep_fastpath_copies: bool = False) -> dict:
    """Only what decoding needs: weights, config, and the update count.

    The optimizer state (two moments per parameter for Adam) triples a checkpoint's size, and
    the training criterion (e.g. word_kd with its teacher path and plugin dir) is irrelevant
    for inference, so it is removed too: the model then loads without our plugins. The encoder's
    fast-path weight copies go too (fairseq rebuilds them on load) unless keep_fastpath_copies.
    """
    if not isinstance(state, dict) or "model" not in state or state.get("cfg") is None:
        raise ModelError("not a fairseq checkpoint (no model weights and config)")
    weights = dict(state["model"])
    if not keep_fastpath_copies:
        for key in fastpath_copies(weights):
            del weights[key]
    cfg = state.get("cfg")
    if cfg is not None:
        cfg = dict(cfg) if isinstance(cfg, dict) else cfg.copy()
        cfg["criterion"] = None
        cfg["optimizer"] = None
        cfg["lr_scheduler"] = None
        if cfg.get("common") is not None:
            cfg["common"] = dict(cfg["common"]) if isinstance(cfg["common"], dict) else cfg["common"].copy()
            cfg["common"]["user_dir"] = None
    return {
        "args": None,
        "cfg": cfg,
        "model": weights,
        "task_state": state.get("task_state", {}),
        "optimizer_history": [{"num_updates": num_updates(state), "criterion_name": "none", "optimizer_name": "none",
                               "lr_scheduler_state": {}}],
        "extra_state": {k: v for k, v in (state.get("extra_state") or {}).items() if k in ("averaged_from", "best")},
    }


def save(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint so that dst is never a partial file (a temporary file, then os.replace)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(src, "rb") as source, open(tmp, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resume_candidates(save_dir: Path) -> list[Path]:
    """Checkpoints in save_dir that hold a full training state besides checkpoint_last.pt:
    interval (checkpoint_E_U.pt) and epoch (checkpointN.pt) checkpoints, then checkpoint_best.pt."""
    numbered = sorted(p for p in save_dir.glob("checkpoint*.pt") if _UPDATE.search(p.name) or _EPOCH.search(p.name))
    best = save_dir / "checkpoint_best.pt"
    return numbered + ([best] if best.exists() else [])


def newest_readable(paths: list[Path]) -> tuple[Path, dict, list[str]] | None:
    """The checkpoint with the most updates among those torch can read (the earliest listed among equals),
    its state, and the DamagedCheckpointError messages of those it cannot; None when none is readable."""
    newest: tuple[int, Path, dict] | None = None
    damaged = []
    for path in paths:
        try:
            state = load_training_state(path)
        except DamagedCheckpointError as exc:
            damaged.append(str(exc))
            continue
        if newest is None or num_updates(state) > newest[0]:
            newest = (num_updates(state), path, state)
    return None if newest is None else (newest[1], newest[2], damaged)
