"""The device policy of both backends: CUDA when the decoding library sees a GPU and the caller allows it, else the CPU.

pipeline.devices may have narrowed CUDA_VISIBLE_DEVICES to the GPUs a job holds before this runs.
"""

from __future__ import annotations

from collections.abc import Callable


def _gpu_count() -> int:
    try:
        import ctranslate2  # torch-free, so a CTranslate2 export decodes without torch
    except ImportError:
        import torch

        return torch.cuda.device_count()
    return ctranslate2.get_cuda_device_count()


def pick_device(cpu: bool = False, gpu_count: Callable[[], int] | None = None) -> str:
    """'cuda' when `gpu_count()` (the backend's own library; default CTranslate2's, else torch's) sees a GPU and not cpu; else 'cpu'."""
    if cpu:
        return "cpu"
    return "cuda" if (gpu_count or _gpu_count)() > 0 else "cpu"
