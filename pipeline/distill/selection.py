"""Which of the teacher's n-best hypotheses becomes the student's target.

top1: the highest-scoring hypothesis (plain sequence-level KD).
seq_inter: the hypothesis closest to the reference by sentence-level chrF or BLEU (Kim & Rush 2016,
"sequence-level interpolation"): the student learns what the teacher says, nudged towards the truth.
Ties go to the higher teacher score, then to the earlier rank, so that selection is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

from sacrebleu.metrics import BLEU, CHRF

from pipeline.distill.shards import NBest

SELECTIONS = ("top1", "seq_inter")
METRICS = ("chrf", "bleu")


def top1(nbest: NBest) -> int:
    """Rank of the highest-scoring hypothesis (fairseq sorts by score, but we do not rely on it)."""
    return max(range(len(nbest.hyps)), key=lambda i: (nbest.hyps[i].score, -i))


def sentence_metric(name: str) -> Callable[[str, str], float]:
    """Sentence-level similarity of detokenised hypothesis and reference, higher is closer."""
    if name == "chrf":
        chrf = CHRF()
        return lambda hyp, ref: chrf.sentence_score(hyp, [ref]).score
    if name == "bleu":
        bleu = BLEU(effective_order=True)  # short sentences: no zero n-gram orders
        return lambda hyp, ref: bleu.sentence_score(hyp, [ref]).score
    raise ValueError(f"unknown metric {name!r}: expected one of {METRICS}")


def reference_scorer(name: str) -> Callable[[str], Callable[[str], float]]:
    """reference -> (hypothesis -> sentence score): sentence_metric(name) with the reference's n-grams
    extracted once for all its hypotheses (sacreBLEU's sentence_score re-extracts them on every call;
    the steps and so the scores are the same: test_distill_scale checks it)."""
    if name == "chrf":
        scorer = CHRF()
    elif name == "bleu":
        scorer = BLEU(effective_order=True)
    else:
        raise ValueError(f"unknown metric {name!r}: expected one of {METRICS}")

    def for_reference(reference: str) -> Callable[[str], float]:
        info = scorer._extract_reference_info([scorer._preprocess_segment(reference)])
        return lambda hyp: scorer._compute_score_from_stats(
            scorer._compute_segment_statistics(scorer._preprocess_segment(hyp), info)).score

    return for_reference


def seq_inter(nbest: NBest, reference: str, metric: Callable[[str, str], float], detok: Callable[[str], str]) -> int:
    """Rank of the hypothesis with the best sentence metric against the reference."""
    keys = [(metric(detok(h.text), reference), h.score, -i) for i, h in enumerate(nbest.hyps)]
    return max(range(len(keys)), key=keys.__getitem__)


def seq_inter_cached(nbest: NBest, reference: str, scorer: Callable[[str], Callable[[str], float]],
                     detok: Callable[[str], str]) -> int:
    """seq_inter with a reference_scorer: the same rank, faster."""
    score = scorer(reference)
    keys = [(score(detok(h.text)), h.score, -i) for i, h in enumerate(nbest.hyps)]
    return max(range(len(keys)), key=keys.__getitem__)


def selector(method: str, metric: str, detok: Callable[[str], str]) -> Callable[[NBest, str], int]:
    """A function (n-best, detokenised reference) -> rank of the chosen hypothesis."""
    if method == "top1":
        return lambda nbest, _reference: top1(nbest)
    if method == "seq_inter":
        scorer = reference_scorer(metric)
        return lambda nbest, reference: seq_inter_cached(nbest, reference, scorer, detok)
    raise ValueError(f"unknown selection {method!r}: expected one of {SELECTIONS}")
