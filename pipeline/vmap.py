"""Vocabulary shortlist (CTranslate2 "vmap") from a parallel corpus in SentencePiece pieces.

    python -m pipeline.vmap --src work/data/<dir>/spm/train.de --tgt work/data/<dir>/spm/train.en \
        --out work/ct2/vmap.txt [--frequent 50] [--per-source 10]

With a vmap, CTranslate2 scores each batch against only the target pieces its source pieces map
to (plus the always-allowed frequent ones) instead of the whole vocabulary: the output projection,
softmax and top-k of every decoding step shrink. A piece missing from the shortlist can no longer be
produced, so a shortlist changes output; pipeline.benchmarks.ct2_vs_fairseq measures by how much.

Without word alignments, candidates are ranked by the Dice coefficient of sentence-level
co-occurrence, 2 c(s, t) / (c(s) + c(t)): a source piece's translations co-occur with it far more
often than chance, while frequent target pieces (function words, punctuation), which co-occur with
everything, are in the always-allowed list instead. File format (CTranslate2's VocabularyMap):
one line per source piece, "SOURCE<TAB>TARGET TARGET ...", and one line with an empty source for
the always-allowed pieces.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from pipeline.cli import run
from pipeline.corpus import read_parallel, write_lines
from pipeline.errors import ConfigError, DataError

log = logging.getLogger("pipeline.vmap")


def build_vmap(src_lines: list[str], tgt_lines: list[str], frequent: int = 50, per_source: int = 10,
               min_count: int = 2) -> tuple[list[str], dict[str, list[str]]]:
    """(always-allowed target pieces, {source piece: candidate target pieces}) from spm-encoded pairs.

    frequent: the most frequent target pieces, always allowed; per_source: candidates kept per
    source piece (best Dice first), among pairs seen together in at least min_count sentences.
    """
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"vmap: {len(src_lines)} source lines but {len(tgt_lines)} target lines")
    if not src_lines:
        raise DataError("vmap: empty corpus")
    src_df: Counter[str] = Counter()  # sentences containing each piece
    tgt_df: Counter[str] = Counter()
    tgt_tf: Counter[str] = Counter()  # occurrences, for the frequent list
    pairs: Counter[tuple[str, str]] = Counter()
    for src, tgt in zip(src_lines, tgt_lines, strict=True):
        s_set, t_pieces = set(src.split()), tgt.split()
        t_set = set(t_pieces)
        src_df.update(s_set)
        tgt_df.update(t_set)
        tgt_tf.update(t_pieces)
        pairs.update((s, t) for s in s_set for t in t_set)
    always = [t for t, _ in tgt_tf.most_common(frequent)]
    allowed = set(always)
    ranked: dict[str, list[tuple[float, str]]] = {}
    for (s, t), c in pairs.items():
        if c >= min_count and t not in allowed:
            ranked.setdefault(s, []).append((2.0 * c / (src_df[s] + tgt_df[t]), t))
    mapping = {s: [t for _, t in sorted(cands, key=lambda x: (-x[0], x[1]))[:per_source]]
               for s, cands in sorted(ranked.items())}
    return always, mapping


def reachable(always: list[str], mapping: dict[str, list[str]]) -> set[str]:
    """Every target piece the shortlist can ever let through."""
    return set(always).union(*mapping.values())


def write_vmap(path: Path, always: list[str], mapping: dict[str, list[str]]) -> None:
    write_lines(path, ["\t" + " ".join(always)] + [f"{s}\t{' '.join(ts)}" for s, ts in mapping.items() if ts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="spm-encoded source side (work/data/<dir>/spm/train.de)")
    parser.add_argument("--tgt", type=Path, required=True, help="spm-encoded target side, line-aligned")
    parser.add_argument("--out", type=Path, required=True, help="vmap file to write")
    parser.add_argument("--frequent", type=int, default=50, help="most frequent target pieces, always allowed")
    parser.add_argument("--per-source", type=int, default=10, help="candidate target pieces per source piece")
    parser.add_argument("--min-count", type=int, default=2, help="sentences a pair must share to be a candidate")
    args = parser.parse_args()
    for name in ("frequent", "per_source", "min_count"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 0")
    src, tgt = read_parallel(args.src, args.tgt, "train")
    always, mapping = build_vmap(src, tgt, args.frequent, args.per_source, args.min_count)
    write_vmap(args.out, always, mapping)
    log.info("wrote %s: %d always-allowed pieces, %d source pieces mapped, %d distinct target pieces reachable",
             args.out, len(always), len(mapping), len(reachable(always, mapping)))


if __name__ == "__main__":
    run(main)
