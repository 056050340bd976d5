"""CTranslate2's runtime settings: compute types (one, or one per device) and the thread split.

The conversion writes float32 weights unless told otherwise; the compute type (int8, float16, ...) is
applied when a model is loaded, for the device the job got, which is only known then.
"""

from __future__ import annotations

import os

from pipeline.errors import BackendError

COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
# compute_type "auto": the type that decoded fastest on each kind of device in
# pipeline.benchmarks.ct2_vs_fairseq (docs/performance.md). CUDA: float16 (tensor cores), not measured.
DEFAULT_COMPUTE_TYPE = {"cpu": "int8", "cuda": "float16"}
# inter_threads x intra_threads when neither is given, on CPU: "all" = one single-threaded translator
# per thread (faster than one translator with every thread in the same benchmark), else one translator.
DEFAULT_INTER_THREADS = "all"


def parse_compute_type(value: str | None) -> dict[str, str] | str:
    """'auto', one compute type, or one per device: 'cpu=float32,cuda=float16' (what the rules pass)."""
    value = (value or "auto").strip()
    if "=" not in value:
        if value != "auto" and value not in COMPUTE_TYPES:
            raise BackendError(f"compute type {value}: not one of auto, {', '.join(COMPUTE_TYPES)}")
        return value
    table: dict[str, str] = {}
    for item in value.split(","):
        device, _, ctype = item.partition("=")
        if device.strip() not in DEFAULT_COMPUTE_TYPE or ctype.strip() not in (*COMPUTE_TYPES, "auto"):
            raise BackendError(f"compute type {value}: expected DEVICE=TYPE pairs (devices cpu, cuda; types {', '.join(COMPUTE_TYPES)})")
        table[device.strip()] = ctype.strip()
    return table


def resolve_compute_type(compute_type: str | None, device: str) -> str:
    """The compute type to load with: 'auto' (or None) is the fastest measured for the device.

    An explicit type the device lacks is an error; 'auto' on a GPU without float16 falls back to float32.
    """
    import ctranslate2

    parsed = parse_compute_type(compute_type)
    chosen = parsed.get(device, "auto") if isinstance(parsed, dict) else parsed
    supported = ctranslate2.get_supported_compute_types(device)
    if chosen == "auto":
        chosen = DEFAULT_COMPUTE_TYPE[device] if DEFAULT_COMPUTE_TYPE[device] in supported else "float32"
    if chosen not in supported:
        raise BackendError(f"compute type {chosen} is not supported on {device} here (supported: {', '.join(sorted(supported))})")
    return chosen


def split_threads(threads: int | None, inter: int | None = None, intra: int | None = None,
                  device: str = "cpu") -> tuple[int, int]:
    """inter_threads (translators decoding different batches) x intra_threads (threads per translator).

    Default on CPU: one single-threaded translator per thread of the job (DEFAULT_INTER_THREADS); on a
    GPU one translator (the GPU does the work). Given one of the two, the other divides the job's threads.
    """
    threads = max(1, threads or os.cpu_count() or 1)
    if inter is None and intra is None:
        if device == "cpu" and DEFAULT_INTER_THREADS == "all":
            return threads, 1
        return 1, threads
    if inter is None:
        return max(1, threads // intra), intra  # type: ignore[operator]
    if intra is None:
        return inter, max(1, threads // inter)
    return inter, intra
