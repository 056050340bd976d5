"""Decoding settings and results shared by both backends (pipeline.decode: fairseq; pipeline.ct2).

Torch-free on purpose: a CTranslate2 export decodes without torch or fairseq installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.corpus import CorpusError


@dataclass(frozen=True)
class GenerationSettings:
    """Search settings (fairseq-generate's names). Greedy is beam=1."""

    beam: int = 5
    nbest: int = 1
    lenpen: float = 1.0
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    unkpen: float = 0.0

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise CorpusError(f"beam size must be >= 1 (got {self.beam})")
        if not 1 <= self.nbest <= self.beam:
            raise CorpusError(f"nbest must be between 1 and the beam size {self.beam} (got {self.nbest})")


@dataclass(frozen=True)
class BatchSettings:
    """Batches capped by padded source tokens and/or sentences, as in fairseq."""

    max_tokens: int | None = 6000
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is None and self.batch_size is None:
            object.__setattr__(self, "max_tokens", 6000)


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
