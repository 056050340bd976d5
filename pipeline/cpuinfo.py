"""What Linux's /proc/cpuinfo says about this CPU: the first processor's fields, and whether it has native bfloat16."""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags


def first_processor(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo as {field: value} (empty where there is no such file)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 products natively (AVX512_BF16 or AMX): there they run about twice
    float32's speed; elsewhere bfloat16 is emulated and slower than float32 (pipeline.benchmarks.cpu_bf16)."""
    return bool(NATIVE_BF16_FLAGS.intersection(first_processor(cpuinfo).get("flags", "").split()))
