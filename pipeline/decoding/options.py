"""The search options, declared once: one dataclass with the defaults, one function that declares the CLI flags.

Every decoding CLI (pipeline.distill.decode_shard, pipeline.evaluate, pipeline.export,
pipeline.translate, pipeline.benchmarks.ct2_vs_fairseq) takes its flags from add_decoding_args and
builds its SearchOptions with SearchOptions.from_args, so a flag, its default and its meaning are
the same everywhere. Torch-free.

Batches: --max-tokens N and/or --batch-size N apply to whichever backend decodes (one setting, no
backend-specific copy); a batch ends at whichever cap it would exceed first. With neither, the
backend's default batch (pipeline.decoding.batching): 6000 tokens for fairseq; for CTranslate2 the
batch its export recorded, else 1000 tokens / 8 sentences on CPU, 6000 tokens on GPU.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.decoding.batching import DEFAULT_MAX_TOKENS, BatchSettings, given_batch
from pipeline.errors import ConfigError, DataError

BACKENDS = ("fairseq", "ctranslate2")
DEFAULT_BACKEND = "fairseq"
DEFAULT_SPEED_RUNS = 3  # passes per speed measurement (config evaluate.speed_runs)
DEFAULT_COMPUTE_TYPE_ARG = "auto"  # the fastest measured type for the device (pipeline.decoding.compute)
LENPEN_KEY = "lenpen"  # pipeline.lenpen's JSON: the length penalty it chose on dev


def read_chosen_lenpen(path: Path) -> float:
    """The length penalty a model's pipeline.lenpen JSON records as chosen (--lenpen-from)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--lenpen-from {path}: no such file (python -m pipeline.lenpen writes it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"--lenpen-from {path}: not a readable JSON file ({err})") from None
    value = record.get(LENPEN_KEY) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"--lenpen-from {path}: no chosen length penalty (a number under \"{LENPEN_KEY}\"; "
                        f"found {value!r})")
    return float(value)


@dataclass(frozen=True)
class SearchOptions:
    """Beam search (fairseq-generate's names; greedy is beam=1) and the batch (None: the backend's default batch)."""

    beam: int = 5
    nbest: int = 1
    lenpen: float = 1.0
    max_len_a: float = 1.2  # hypotheses at most max_len_a * (longest source of the batch + EOS) + max_len_b pieces
    max_len_b: int = 10
    min_len: int = 1
    unkpen: float = 0.0
    max_tokens: int | None = None  # padded source tokens per batch
    batch_size: int | None = None  # sentences per batch

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ConfigError(f"beam size must be >= 1 (got {self.beam})")
        if not 1 <= self.nbest <= self.beam:
            raise ConfigError(f"nbest must be between 1 and the beam size {self.beam} (got {self.nbest})")

    def batch(self, default: BatchSettings | None = None) -> BatchSettings:
        """The batch: max_tokens / batch_size if either is set, else `default` (else DEFAULT_MAX_TOKENS tokens)."""
        return given_batch(self) or default or BatchSettings()

    def search(self) -> dict[str, Any]:
        """The search settings as recorded beside results (no batch)."""
        return {"beam": self.beam, "lenpen": self.lenpen, "max_len_a": self.max_len_a, "max_len_b": self.max_len_b}

    @classmethod
    def from_args(cls, args: argparse.Namespace, **override: Any) -> SearchOptions:
        """The options add_decoding_args' flags hold (a flag the CLI lacks keeps its default), with overrides;
        --lenpen-from replaces --lenpen."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if getattr(args, "lenpen_from", None):
            values["lenpen"] = read_chosen_lenpen(args.lenpen_from)
        return cls(**{**values, **override})


def add_decoding_args(
    parser: argparse.ArgumentParser,
    *,
    nbest: bool = True,
    batch: bool = True,
    device: bool = True,
    fp16: bool = True,
    backend: bool = True,
    ctranslate2: bool = True,
    vmap: bool = True,
    speed_runs: bool = False,
) -> None:
    """Declare the decoding flags (defaults from SearchOptions); the keywords leave out the groups a CLI does not use.

    search: --beam --nbest --lenpen --lenpen-from --max-len-a --max-len-b; batch: --max-tokens --batch-size;
    device: --cpu --threads; fp16: --fp16; backend: --backend --ct2-model; ctranslate2:
    --compute-type --inter-threads --intra-threads; vmap: --vmap; speed_runs: --speed-runs.
    """
    d = SearchOptions()
    g = parser.add_argument_group("search")
    g.add_argument("--beam", type=int, default=d.beam, help=f"beam size, 1 = greedy (default {d.beam})")
    if nbest:
        g.add_argument("--nbest", type=int, default=d.nbest, help=f"hypotheses kept per sentence, <= beam (default {d.nbest})")
    g.add_argument("--lenpen", type=float, default=d.lenpen, help=f"length penalty (default {d.lenpen})")
    g.add_argument("--lenpen-from", type=Path, metavar="JSON",
                   help="the length penalty chosen for the model on dev: pipeline.lenpen's JSON (replaces --lenpen)")
    g.add_argument("--max-len-a", type=float, default=d.max_len_a,
                   help=f"output length cap: a * (longest source of the batch + EOS) + b pieces (default a = {d.max_len_a})")
    g.add_argument("--max-len-b", type=int, default=d.max_len_b, help=f"(default b = {d.max_len_b})")
    if batch:
        b = parser.add_argument_group(
            "batches", "one setting for whichever backend decodes (pass each flag once; given twice, the last wins); a "
            "batch ends at the first cap it reaches. Neither given: the "
            f"backend's default batch (fairseq {DEFAULT_MAX_TOKENS} tokens; CTranslate2 the batch its export recorded, "
            f"else 1000 tokens / 8 sentences on CPU, {DEFAULT_MAX_TOKENS} tokens on GPU)")
        b.add_argument("--max-tokens", type=int, default=d.max_tokens, help="padded source tokens per batch")
        b.add_argument("--batch-size", type=int, default=d.batch_size, help="sentences per batch")
    if device or fp16:
        r = parser.add_argument_group("device")
        if device:
            r.add_argument("--cpu", action="store_true", help="decode on the CPU even where CUDA exists")
            r.add_argument("--threads", type=int, default=None,
                           help="CPU threads: torch's with fairseq (default: torch's), CTranslate2's inter x intra "
                           "(default: all cores)")
        if fp16:
            r.add_argument("--fp16", action="store_true", help="fairseq: half precision (CUDA only; CTranslate2: --compute-type)")
    if backend or ctranslate2 or vmap:
        c = parser.add_argument_group("backend")
        if backend:
            c.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help=f"decoder (default {DEFAULT_BACKEND})")
            c.add_argument("--ct2-model", help="--backend ctranslate2: the converted model directory (python -m pipeline.ct2 convert)")
        if ctranslate2:
            c.add_argument("--compute-type", default=DEFAULT_COMPUTE_TYPE_ARG,
                           help="CTranslate2: a compute type, or one per device (cpu=int8,cuda=float16); default auto: "
                           "the directory's own choice, else the fastest measured for the device")
            c.add_argument("--inter-threads", type=int, help="CTranslate2: translators decoding batches at once")
            c.add_argument("--intra-threads", type=int, help="CTranslate2: threads per translator")
        if vmap:
            c.add_argument("--vmap", action="store_true", default=None,
                           help="CTranslate2: decode with the model's vocabulary shortlist (vmap.txt; faster, changes the "
                           "output; default: if its export chose it)")
    if speed_runs:
        parser.add_argument("--speed-runs", type=int, default=DEFAULT_SPEED_RUNS,
                            help=f"decode this many times; the fastest pass is the speed (default {DEFAULT_SPEED_RUNS}: "
                            "a busy machine only ever adds time)")
