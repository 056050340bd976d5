"""Paired bootstrap resampling of systems against a baseline, by sacreBLEU's own PairedTest.

What `sacrebleu REF -i BASELINE SYSTEM... --paired-bs` prints, through sacreBLEU's API (no
re-implementation): corpus BLEU (sacreBLEU's defaults, as pipeline.evaluate scores), the bootstrap
mean and the half-width of its 95% confidence interval for every system (the baseline included), and
each system's p-value against the baseline. sacreBLEU draws the same resample indices for every
system from the seed (its SACREBLEU_SEED), so a system's figures do not depend on which other
systems are tested beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from pipeline.errors import DataError

SEED_VARIABLE = "SACREBLEU_SEED"  # sacreBLEU reads the resampling's seed from here only


@dataclass(frozen=True)
class Bootstrap:
    """Resamples and seed (sacreBLEU's defaults; seed 0 would mean unseeded to sacreBLEU, so it must be > 0)."""

    samples: int = 1000
    seed: int = 12345

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seed < 1:
            raise ValueError(f"bootstrap samples and seed must be positive: {self}")


@dataclass(frozen=True)
class PairedResult:
    score: float  # corpus BLEU
    mean: float  # mean BLEU over the resamples
    ci: float  # half-width of the 95% confidence interval around `mean`
    p_value: float | None  # against the baseline; None for the baseline itself


@contextmanager
def sacrebleu_seed(seed: int) -> Iterator[None]:
    old = os.environ.get(SEED_VARIABLE)
    os.environ[SEED_VARIABLE] = str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ[SEED_VARIABLE]
        else:
            os.environ[SEED_VARIABLE] = old


def paired_bootstrap(baseline: tuple[str, Sequence[str]], systems: Sequence[tuple[str, Sequence[str]]],
                     references: Sequence[str], settings: Bootstrap) -> tuple[dict[str, PairedResult], str]:
    """Every system (name, hypotheses) against the baseline on one reference: results by name (the
    baseline's too, without p-value) and sacreBLEU's signature of the test (with bs: and seed:)."""
    names = [baseline[0]] + [name for name, _ in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique: {names}")
    for name, hyps in [baseline, *systems]:
        if len(hyps) != len(references):
            raise DataError(f"{name}: {len(hyps)} hypotheses but the reference has {len(references)} lines")
    with sacrebleu_seed(settings.seed):  # read by PairedTest() (and its baseline's resampling) and kept in it
        test = PairedTest([baseline, *systems], {"BLEU": BLEU(references=[references])}, references=None,
                          test_type="bs", n_samples=settings.samples)
        signatures, scores = test()
    results = {name: PairedResult(float(r.score), float(r.mean), float(r.ci), None if r.p_value is None else float(r.p_value))
               for name, r in zip(scores["System"], scores["BLEU"], strict=True)}
    return results, signatures["BLEU"].format()
