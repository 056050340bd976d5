"""Statistics of the distilled corpus that add up across shards exactly.

Each shard job keeps counts and sacreBLEU's sufficient statistics (per-segment n-gram counts summed
over the shard); the merge adds them and computes the corpus scores once, as sacreBLEU's own
corpus_score does from the same sums (BLEU/CHRF with their defaults, like sacrebleu.corpus_bleu and
corpus_chrf). The mean length ratios are kept as exact fractions, so their sum does not depend on
the order in which shards are added. `final()` gives the same JSON as pipeline.distill.assemble.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from sacrebleu.metrics import BLEU, CHRF

from pipeline.distill.filters import HYPOTHESIS_FILTERS, FilterConfig

UNK = "<unk>"


class SegmentScorer:
    """sacreBLEU's per-segment sufficient statistics of BLEU and chrF (their defaults, as corpus_bleu and
    corpus_chrf use them): the steps of Metric._extract_corpus_statistics, with a reference's n-grams
    extracted once for the several hypotheses scored against it."""

    def __init__(self) -> None:
        self.metrics = (BLEU(), CHRF())

    def reference(self, ref: str) -> tuple:
        return tuple(m._extract_reference_info([m._preprocess_segment(ref)]) for m in self.metrics)

    def segment(self, hyp: str, reference: tuple) -> tuple[list[int], list[int]]:
        bleu, chrf = (m._compute_segment_statistics(m._preprocess_segment(hyp), info)
                      for m, info in zip(self.metrics, reference, strict=True))
        return bleu, chrf


class CorpusScore:
    """Summed sufficient statistics of corpus BLEU and chrF for one (hypotheses, references) stream."""

    def __init__(self, bleu: list[int] | None = None, chrf: list[int] | None = None, segments: int = 0):
        self.bleu, self.chrf, self.segments = bleu, chrf, segments

    def add_segment(self, bleu: list[int], chrf: list[int]) -> None:
        self.bleu = list(bleu) if self.bleu is None else [a + b for a, b in zip(self.bleu, bleu, strict=True)]
        self.chrf = list(chrf) if self.chrf is None else [a + b for a, b in zip(self.chrf, chrf, strict=True)]
        self.segments += 1

    def merge(self, other: CorpusScore) -> None:
        self.bleu = _sum_lists([self.bleu, other.bleu])
        self.chrf = _sum_lists([self.chrf, other.chrf])
        self.segments += other.segments

    def scores(self) -> dict:
        """Corpus BLEU and chrF rounded as assemble does; None for an empty corpus."""
        if not self.segments:
            return {"bleu": None, "chrf": None}
        return {
            "bleu": round(BLEU()._compute_score_from_stats(self.bleu).score, 2),
            "chrf": round(CHRF()._compute_score_from_stats(self.chrf).score, 2),
        }

    def to_json(self) -> dict:
        return {"segments": self.segments, "bleu": self.bleu, "chrf": self.chrf}

    @classmethod
    def from_json(cls, data: dict) -> CorpusScore:
        return cls(data["bleu"], data["chrf"], data["segments"])


def _sum_lists(lists: list[list[int] | None]) -> list[int] | None:
    present = [x for x in lists if x is not None]
    if not present:
        return None
    if len({len(x) for x in present}) != 1:
        raise ValueError("sufficient statistics of different lengths")
    return [sum(values) for values in zip(*present, strict=True)]


@dataclass
class DistillStats:
    """Everything the distilled corpus's stats.json reports, in a form that adds across shards."""

    pairs_in: int = 0
    pairs_out: int = 0
    selected_rank: Counter = field(default_factory=Counter)
    filtered: dict = field(default_factory=lambda: dict.fromkeys(HYPOTHESIS_FILTERS, 0))
    differ: int = 0
    unk: int = 0
    ratio_src: Fraction = Fraction(0)
    ratio_ref: Fraction = Fraction(0)
    distilled: CorpusScore = field(default_factory=CorpusScore)
    selected: CorpusScore = field(default_factory=CorpusScore)
    # (target pieces, source pieces) and (target pieces, reference pieces) -> pairs; summed as fractions at the end
    _ratio_counts: Counter = field(default_factory=Counter)
    _scorer: SegmentScorer = field(default_factory=SegmentScorer, repr=False, compare=False)

    def add_pair(self, rank: int, selected_text: str, ref_text: str, reason: str | None, kept: bool,
                 src_spm: str, tgt_spm: str | None, ref_spm: str, tgt_text: str | None) -> None:
        """One training pair: the chosen rank, its filter verdict, and (when kept) its target."""
        self.pairs_in += 1
        self.selected_rank[rank] += 1
        reference = self._scorer.reference(ref_text)
        selected = self._scorer.segment(selected_text, reference)
        self.selected.add_segment(*selected)
        if reason is not None:
            self.filtered[reason] += 1
        if not kept:
            return
        self.pairs_out += 1
        tgt_pieces = tgt_spm.split()
        self.differ += tgt_pieces != ref_spm.split()
        self.unk += UNK in tgt_pieces
        n_tgt = len(tgt_pieces)
        self._ratio_counts[(n_tgt, max(1, len(src_spm.split())), max(1, len(ref_spm.split())))] += 1
        self.distilled.add_segment(*(selected if tgt_text == selected_text else self._scorer.segment(tgt_text, reference)))

    def _fold_ratios(self) -> None:
        for (n_tgt, n_src, n_ref), count in self._ratio_counts.items():
            self.ratio_src += Fraction(n_tgt * count, n_src)
            self.ratio_ref += Fraction(n_tgt * count, n_ref)
        self._ratio_counts.clear()

    def merge(self, other: DistillStats) -> None:
        self._fold_ratios()
        other._fold_ratios()
        self.pairs_in += other.pairs_in
        self.pairs_out += other.pairs_out
        self.selected_rank.update(other.selected_rank)
        for name in HYPOTHESIS_FILTERS:
            self.filtered[name] += other.filtered[name]
        self.differ += other.differ
        self.unk += other.unk
        self.ratio_src += other.ratio_src
        self.ratio_ref += other.ratio_ref
        self.distilled.merge(other.distilled)
        self.selected.merge(other.selected)

    def to_json(self) -> dict:
        self._fold_ratios()
        return {
            "pairs_in": self.pairs_in, "pairs_out": self.pairs_out,
            "selected_rank": {str(k): v for k, v in sorted(self.selected_rank.items())},
            "filtered": dict(self.filtered), "differ": self.differ, "unk": self.unk,
            "ratio_src": str(self.ratio_src), "ratio_ref": str(self.ratio_ref),
            "distilled": self.distilled.to_json(), "selected": self.selected.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> DistillStats:
        filtered = data["filtered"]
        if set(filtered) != set(HYPOTHESIS_FILTERS):
            raise ValueError(f"filters {sorted(filtered)}, expected {sorted(HYPOTHESIS_FILTERS)}")
        return cls(
            pairs_in=data["pairs_in"], pairs_out=data["pairs_out"],
            selected_rank=Counter({int(k): v for k, v in data["selected_rank"].items()}),
            filtered={name: filtered[name] for name in HYPOTHESIS_FILTERS}, differ=data["differ"], unk=data["unk"],
            ratio_src=Fraction(data["ratio_src"]), ratio_ref=Fraction(data["ratio_ref"]),
            distilled=CorpusScore.from_json(data["distilled"]), selected=CorpusScore.from_json(data["selected"]),
        )

    def final(self, selection: str, metric: str, filters: FilterConfig) -> dict:
        """The statistics of the distilled corpus, key for key as pipeline.distill.assemble writes them."""
        self._fold_ratios()
        total_removed = sum(self.filtered.values())
        n_out = self.pairs_out
        return {
            "pairs_in": self.pairs_in,
            "pairs_out": n_out,
            "selection": selection,
            "seq_inter_metric": metric if selection == "seq_inter" else None,
            "selected_rank": {str(k): v for k, v in sorted(self.selected_rank.items())},
            "filtered": {**self.filtered, "total": total_removed},
            "on_filtered": filters.on_filtered,
            "fallback_to_reference": total_removed if filters.on_filtered == "reference" else 0,
            "dropped": total_removed if filters.on_filtered == "drop" else 0,
            "targets_differ_from_reference": self.differ,
            "targets_differ_fraction": round(self.differ / n_out, 4) if n_out else 0.0,
            "targets_with_unk": self.unk,
            "length_ratio_mean": {
                "target_to_source": round(float(self.ratio_src / n_out), 4) if n_out else 0.0,
                "target_to_reference": round(float(self.ratio_ref / n_out), 4) if n_out else 0.0,
            },
            "distilled_vs_reference": self.distilled.scores(),
            "selected_vs_reference": self.selected.scores(),
            "filter_config": asdict(filters),
        }
