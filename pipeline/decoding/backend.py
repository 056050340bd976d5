"""One interface for both decoders: open a model, decode n-best lists with scores, describe the runtime.

    backend = open_backend("work/models/teacher-<key>/model.pt")        # fairseq checkpoint
    backend = open_backend("export/student", compute_type="int8")  # CTranslate2 directory
    backend = open_backend("work/models/teacher-<key>/model.pt:work/models/teacher_2-<key>/model.pt")  # a fairseq ensemble
    backend = backend_from_args(args)                              # add_decoding_args' flags
    decoded = backend.decode(spm_lines, SearchOptions(beam=5, nbest=5), warmup=True)

A caller never branches on the backend: what differs (device, compute type, the default batch,
what is recorded about the model and its size) is asked of the backend. fairseq and torch are
imported only when a fairseq checkpoint is opened, CTranslate2 only for a converted directory.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pipeline.decoding.batching import BatchSettings
from pipeline.decoding.ct2_dir import is_ct2_dir
from pipeline.decoding.options import BACKENDS, SearchOptions
from pipeline.decoding.results import Decoded
from pipeline.errors import ConfigError, ModelError


class Backend(Protocol):
    """A loaded model that decodes spm-encoded lines (pipeline.decoding.fairseq_backend, .ct2_backend)."""

    name: str  # "fairseq" or "ctranslate2"
    path: Path  # the checkpoint file or the CTranslate2 directory
    source_lang: str
    target_lang: str
    device: str  # "cpu" or "cuda"
    data_dir: Path | None  # the binarised data / dictionaries the model was trained with (as recorded)
    default_batch: BatchSettings  # the batch when SearchOptions name none
    normalize_punctuation: bool  # the data stage's setting as the model records it (a checkpoint: True)

    def decode(self, lines: Sequence[str], options: SearchOptions, warmup: bool = False) -> Decoded:
        """n-best lists (options.nbest each, best first, fairseq's scores) in input order, with timing.

        warmup: decode the first batch once before the clock starts."""
        ...

    def read_split(self, split: str) -> list[str]:
        """The source side of a binarised split (fairseq's name: valid, test) as spm lines."""
        ...

    def spm_model(self, override: str | Path | None = None) -> Path:
        """The SentencePiece model: override, else the one beside the model (else the data stage's)."""
        ...

    def describe_device(self) -> str: ...

    def runtime_info(self) -> dict[str, Any]:
        """Device, precision or compute type, threads, library versions: recorded beside speeds."""
        ...

    def model_record(self) -> dict[str, Any]:
        """What an evaluation records about the model: checkpoint (and backend, compute type, directory)."""
        ...

    def model_size(self) -> dict[str, Any]:
        """Parameters and checkpoint bytes (fairseq), model.bin bytes and weight type (CTranslate2)."""
        ...


def _missing(model: Path) -> ModelError:
    hint = f" (train it first: `snakemake {model}`)" if model.match("work/models/*/model.pt") else ""
    return ModelError(f"--model {model}: no such file or directory{hint}")


def open_backend(
    model: str | os.PathLike,
    *,
    backend: str | None = None,
    data_dir: str | os.PathLike | None = None,
    src: str | None = None,
    tgt: str | None = None,
    cpu: bool = False,
    threads: int | None = None,
    fp16: bool = False,
    compute_type: str | None = "auto",
    inter_threads: int | None = None,
    intra_threads: int | None = None,
    use_vmap: bool | None = None,
) -> Backend:
    """Open a model for decoding: a fairseq checkpoint (a file, or a directory with model.pt) or a CTranslate2 directory.

    backend: "fairseq" or "ctranslate2"; None: from what `model` is. Options a backend lacks are
    ignored (fp16 and data_dir by CTranslate2; compute_type, inter/intra_threads by fairseq).
    """
    path = Path(model)
    if os.pathsep in str(model):  # fairseq's ensemble syntax: several checkpoints
        if backend == "ctranslate2":
            raise ConfigError(f"--model {model}: CTranslate2 cannot decode an ensemble; use --backend fairseq")
        backend = "fairseq"
    if backend is None:
        if not path.exists():
            raise _missing(path)
        if path.is_dir() and not is_ct2_dir(path) and not (path / "model.pt").is_file():
            raise ModelError(f"--model {path}: a directory without model.pt (fairseq) or model.bin (CTranslate2)")
        backend = "ctranslate2" if is_ct2_dir(path) else "fairseq"
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend}: not one of {', '.join(BACKENDS)}")
    if backend == "ctranslate2":
        from pipeline.decoding.ct2_backend import open_ct2

        return open_ct2(path, compute_type=compute_type, threads=threads, inter_threads=inter_threads,
                        intra_threads=intra_threads, cpu=cpu, use_vmap=use_vmap, src=src, tgt=tgt)
    from pipeline.decoding.fairseq_backend import open_fairseq

    return open_fairseq(path, data_dir=data_dir, src=src, tgt=tgt, cpu=cpu, fp16=fp16, threads=threads,
                        use_vmap=use_vmap)


def backend_from_args(args: argparse.Namespace, model: str | os.PathLike | None = None) -> Backend:
    """The backend add_decoding_args' flags name.

    --backend ctranslate2: --ct2-model DIR; --backend fairseq: --model CHECKPOINT; a CLI without
    --backend: `model` (default --model), the backend found from what it is. --data, --src, --tgt are
    used where the CLI has them.
    """
    name = getattr(args, "backend", None)
    if name == "ctranslate2":
        if not getattr(args, "ct2_model", None):
            raise ConfigError("--backend ctranslate2 needs --ct2-model DIR (a converted model, see python -m pipeline.ct2 convert)")
        model = args.ct2_model
    else:
        model = model if model is not None else getattr(args, "model", None)
        if model is None:
            raise ConfigError("--model CHECKPOINT is required with --backend fairseq")
    return open_backend(
        model, backend=name, data_dir=getattr(args, "data", None), src=getattr(args, "src", None),
        tgt=getattr(args, "tgt", None), cpu=getattr(args, "cpu", False), threads=getattr(args, "threads", None),
        fp16=getattr(args, "fp16", False), compute_type=getattr(args, "compute_type", "auto"),
        inter_threads=getattr(args, "inter_threads", None), intra_threads=getattr(args, "intra_threads", None),
        use_vmap=getattr(args, "vmap", None),
    )
