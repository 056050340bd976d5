"""A converted CTranslate2 model directory: its files and our metadata (pipeline.json). Torch-free.

Besides CTranslate2's own files (model.bin, config.json, vocabularies) a directory holds the
SentencePiece model and pipeline.json (languages, position limits, origin, the data stage's
normalisation, an export's settings), so it translates raw text on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError

META = "pipeline.json"  # our metadata beside CTranslate2's own files
SPM = "spm.model"
VMAP = "vmap.txt"  # the vocabulary shortlist the converter copies in (pipeline.vmap)
SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"  # separate SentencePiece models (OPUS-MT/Marian's names)


def is_ct2_dir(path: str | os.PathLike) -> bool:
    """A CTranslate2 directory (model.bin) and not a fairseq model directory (model.pt)."""
    path = Path(path)
    return path.is_dir() and (path / "model.bin").is_file() and not (path / "model.pt").is_file()


def model_dir(path: str | os.PathLike) -> Path:
    """A CTranslate2 model directory (model.bin given means its directory), or a clear error."""
    path = Path(path)
    if path.name == "model.bin":
        path = path.parent
    if not (path / "model.bin").is_file():
        raise ModelError(f"{path}: not a CTranslate2 model directory (no model.bin)")
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The directory's pipeline.json ({} if it has none)."""
    meta = path / META
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{meta}: unreadable ({err})") from None


def spm_models(path: str | os.PathLike) -> tuple[Path, Path]:
    """The directory's SentencePiece models (source, target): its spm.model (pipeline.json's "spm") for both,
    or source.spm and target.spm, as a model converted from Marian/OPUS-MT carries them."""
    path = Path(path)
    joint = path / read_metadata(path).get("spm", SPM)
    if joint.is_file():
        return joint, joint
    if (path / SOURCE_SPM).is_file() and (path / TARGET_SPM).is_file():
        return path / SOURCE_SPM, path / TARGET_SPM
    raise ModelError(f"{path}: no SentencePiece model in the CTranslate2 directory ({SPM}, or {SOURCE_SPM} and {TARGET_SPM})")
