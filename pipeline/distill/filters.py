"""Filters on distilled pairs: the failure modes of a teacher's output that a student must not learn.

An undertrained or overconfident teacher emits empty outputs, outputs far longer or shorter than
the source, and loops ("a man a man a man ..."). Lengths are counted in SentencePiece pieces, the
units the student is trained on. A pair is counted under the first filter it fails, in HYPOTHESIS_FILTERS order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HYPOTHESIS_FILTERS = ("empty", "length_ratio", "repeat")
ON_FILTERED = ("reference", "drop")


@dataclass(frozen=True)
class FilterConfig:
    min_length_ratio: float = 0.333  # hypothesis pieces / source pieces
    max_length_ratio: float = 3.0
    max_repeat: int = 4  # a unit of 1..max_repeat_ngram pieces may occur at most this often in a row
    max_repeat_ngram: int = 4
    on_filtered: str = "reference"  # reference: the pair keeps its reference target; drop: the pair goes

    def __post_init__(self) -> None:
        if not 0 <= self.min_length_ratio <= self.max_length_ratio:
            raise ValueError(f"need 0 <= min_length_ratio <= max_length_ratio, got {self.min_length_ratio}, {self.max_length_ratio}")
        if self.max_repeat < 1 or self.max_repeat_ngram < 1:
            raise ValueError("max_repeat and max_repeat_ngram must be >= 1")
        if self.on_filtered not in ON_FILTERED:
            raise ValueError(f"on_filtered must be one of {ON_FILTERED}, got {self.on_filtered!r}")


def longest_repeat(tokens: Sequence[str], max_ngram: int) -> int:
    """The most consecutive occurrences of any n-gram (n <= max_ngram) in tokens; 1 when nothing repeats.

    k consecutive copies of an n-gram are a run of (k-1)*n positions where tokens[i] == tokens[i+n].
    """
    best = 1 if tokens else 0
    for n in range(1, max_ngram + 1):
        run = 0
        for i in range(len(tokens) - n):
            run = run + 1 if tokens[i] == tokens[i + n] else 0
            best = max(best, run // n + 1)
    return best


def hypothesis_rejection(src: str, hyp: str, cfg: FilterConfig) -> str | None:
    """The first filter the (spm source, spm hypothesis) pair fails, or None to keep the hypothesis."""
    hyp_tokens = hyp.split()
    if not hyp_tokens:
        return "empty"
    n_src = len(src.split())
    ratio = len(hyp_tokens) / n_src if n_src else float("inf")
    if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
        return "length_ratio"
    if longest_repeat(hyp_tokens, cfg.max_repeat_ngram) > cfg.max_repeat:
        return "repeat"
    return None
