"""Batches: the settings, the default batch of each backend, and fairseq's way of forming them. Torch-free.

A batch is capped by padded source tokens (max_tokens) and/or sentences (batch_size): it ends at
whichever cap it would exceed first, as in fairseq. A caller that names neither gets the backend's
default batch: DEFAULT_MAX_TOKENS tokens for fairseq; for CTranslate2 the batch the model's export
recorded, else DEFAULT_CPU_BATCH on a CPU (small batches decode fastest with single-threaded
translators, docs/performance.md) and DEFAULT_MAX_TOKENS tokens on a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_MAX_TOKENS = 6000


@dataclass(frozen=True)
class BatchSettings:
    """A resolved batch: padded source tokens and/or sentences per batch (neither given: DEFAULT_MAX_TOKENS tokens)."""

    max_tokens: int | None = DEFAULT_MAX_TOKENS
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is None and self.batch_size is None:
            object.__setattr__(self, "max_tokens", DEFAULT_MAX_TOKENS)


DEFAULT_CPU_BATCH = BatchSettings(max_tokens=1000, batch_size=8)  # CTranslate2 on a CPU


class BatchLike(Protocol):
    max_tokens: int | None
    batch_size: int | None


def given_batch(given: BatchLike) -> BatchSettings | None:
    """The batch a caller asked for (its max_tokens and/or batch_size), or None when it named neither."""
    if given.max_tokens is None and given.batch_size is None:
        return None
    return BatchSettings(max_tokens=given.max_tokens, batch_size=given.batch_size)


def ct2_batch(given: BatchLike, meta: Mapping[str, Any], device: str = "cpu") -> BatchSettings:
    """CTranslate2's batch: the one given, else the one the model's export recorded (pipeline.json "decoding"), else the device's default."""
    chosen = given_batch(given)
    if chosen is not None:
        return chosen
    recorded = meta.get("decoding") or {}
    if recorded.get("max_tokens") or recorded.get("batch_size"):
        return BatchSettings(max_tokens=recorded.get("max_tokens"), batch_size=recorded.get("batch_size"))
    return DEFAULT_CPU_BATCH if device == "cpu" else BatchSettings(max_tokens=DEFAULT_MAX_TOKENS)


def make_batches(lengths: Sequence[int], batch: BatchLike, sort: bool = True) -> list[list[int]]:
    """Indices grouped as fairseq groups them: sorted by length (stably), capped by padded tokens and sentences.

    sort=False keeps the input order (only to measure what sorting buys: more padding, other caps).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if sort else range(len(lengths))
    for i in order:
        grown = max(longest, lengths[i])
        full = current and (
            (batch.max_tokens is not None and grown * (len(current) + 1) > batch.max_tokens)
            or (batch.batch_size is not None and len(current) >= batch.batch_size)
        )
        if full:
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches
