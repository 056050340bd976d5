"""What a decoding returns, whichever backend ran it: n-best lists in input order, and its timing. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Hypothesis:
    tokens: str  # target pieces joined by spaces, without EOS
    score: float  # fairseq's score: log-probability (EOS included) divided by (length + 1)**lenpen
    length: int  # number of target pieces, without EOS


@dataclass
class DecodeStats:
    """Timing of one decoding pass (a warm-up batch, if any, is not counted)."""

    sentences: int = 0
    target_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    warmup_batches: int = 0
    capped: int = 0  # hypotheses that hit the length cap (their score got fairseq's forced EOS)

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds if self.seconds > 0 else float("nan")

    @property
    def target_tokens_per_s(self) -> float:
        return self.target_tokens / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sentences_per_s": self.sentences_per_s, "target_tokens_per_s": self.target_tokens_per_s}


@dataclass
class Decoded:
    hypotheses: list[list[Hypothesis]]  # one n-best list per input, in input order
    stats: DecodeStats = field(default_factory=DecodeStats)
