"""The real size of a model: unique parameters and the checkpoint's size with only what inference needs.

fairseq 0.12.2 over-reports both. Its logged parameter count adds the copies of each encoder
layer's weights kept for a disabled inference fast path (in_proj_weight, fc1_weight, ...), and a
training checkpoint also stores those copies, the optimizer state and the criterion's state. Here
each tensor is counted once (by storage, so shared embeddings count once), the fast-path copies not
at all, and a stripped checkpoint (model weights + config; the copies are rebuilt by fairseq when it
loads) is written and measured.

    python -m pipeline.model_size CHECKPOINT [--data DIR] [--stripped OUT.pt] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline import checkpoints
from pipeline.checkpoints import fastpath_copies
from pipeline.cli import run
from pipeline.errors import ModelError


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (t.data_ptr(), t.numel(), tuple(t.shape))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Unique parameters of a model, fast-path copies excluded; embeddings (shared or not) apart.

    parameters: the real number; fairseq_logged: what fairseq-train prints (for comparison);
    embedding_parameters: token embeddings and output projection, each storage once.
    """
    named = list(model.named_parameters(remove_duplicate=False))
    copies = set(fastpath_copies(dict(named)))
    seen: set[tuple] = set()
    total = embedding = 0
    for name, p in named:
        key = _storage_key(p)
        if name in copies or key in seen:
            continue
        seen.add(key)
        total += p.numel()
        if "embed_tokens" in name or "output_projection" in name:
            embedding += p.numel()
    return {
        "parameters": total,
        "embedding_parameters": embedding,
        "non_embedding_parameters": total - embedding,
        "fairseq_logged": sum(p.numel() for p in model.parameters()),
    }


def strip_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, keep_fastpath_copies: bool = False) -> Path:
    """Write a copy of a fairseq checkpoint with only what inference needs (see checkpoints.strip)."""
    from pipeline.decoding.fairseq_model import checkpoint_file

    path = checkpoint_file(src)
    try:  # as saved (fairseq's loader would convert and upgrade the config)
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch/pickle raise many types for a bad file
        raise ModelError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    try:
        stripped = checkpoints.strip(state, keep_fastpath_copies)
    except ModelError as err:  # pipeline.checkpoints' own message, with the file
        raise ModelError(f"{path}: {err}") from None
    checkpoints.save(stripped, dst)
    return Path(dst)


def checkpoint_sizes(checkpoint: str | os.PathLike, stripped: str | os.PathLike | None = None) -> dict[str, Any]:
    """Bytes on disk of the checkpoint as trained and stripped (written to `stripped`, or a temporary file)."""
    checkpoint = Path(checkpoint)
    if stripped is not None:
        out = strip_checkpoint(checkpoint, stripped)
        size = out.stat().st_size
    else:
        with tempfile.TemporaryDirectory() as tmp:
            size = strip_checkpoint(checkpoint, Path(tmp) / "model.pt").stat().st_size
    return {"checkpoint_bytes": checkpoint.stat().st_size, "stripped_checkpoint_bytes": size}


def model_size(checkpoint: str | os.PathLike, model: torch.nn.Module | None = None, data_dir: str | None = None,
               stripped: str | os.PathLike | None = None) -> dict[str, Any]:
    """Parameter counts and checkpoint sizes; loads the model from the checkpoint unless given."""
    if model is None:
        from pipeline.decoding.fairseq_model import load_model

        model = load_model(checkpoint, data_dir=data_dir, cpu=True).model
    counts = count_parameters(model)
    sizes = checkpoint_sizes(checkpoint, stripped)
    return {**counts, **sizes, "weights_bytes_fp32": counts["parameters"] * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", help="dictionaries (default: found from the checkpoint)")
    parser.add_argument("--stripped", type=Path, help="keep the stripped checkpoint here")
    parser.add_argument("--json", type=Path, help="write the numbers here (default: stdout)")
    args = parser.parse_args()
    if not args.checkpoint.exists():
        raise ModelError(f"{args.checkpoint}: no such checkpoint")
    result = {"checkpoint": str(args.checkpoint), **model_size(args.checkpoint, data_dir=args.data, stripped=args.stripped)}
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    run(main)
