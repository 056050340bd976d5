"""A text-to-text teacher (a CTranslate2 model with its own SentencePiece model(s)) decoding for the students.

    nbests = decode_text(backend, ["Ein Mann ...", ...], options, out_spm="work/data/<dir>/spm/spm.model")

The source text is encoded with the teacher's source SentencePiece model, decoded, every hypothesis
turned back into text with its target model and re-encoded with the students' (out_spm): the
n-best lists come back in the students' pieces, as a fairseq teacher's would, with the teacher's
scores and lengths in the students' pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.decoding import Backend, SearchOptions
from pipeline.decoding.ct2_dir import spm_models
from pipeline.decoding.results import Hypothesis
from pipeline.errors import BackendError


def _processor(path: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def decode_text(backend: Backend, texts: Sequence[str], options: SearchOptions, out_spm: str | Path) -> list[list[Hypothesis]]:
    """n-best lists for source text, in input order, as pieces of out_spm."""
    if backend.name != "ctranslate2":
        raise BackendError(f"a text-to-text teacher is a CTranslate2 directory, not a {backend.name} model ({backend.path})")
    source_spm, target_spm = (_processor(path) for path in spm_models(backend.path))
    students = _processor(Path(out_spm))
    pieces = [" ".join(source_spm.encode(text, out_type=str)) for text in texts]
    nbests = backend.decode(pieces, options).hypotheses
    out = []
    for hyps in nbests:
        converted = []
        for hyp in hyps:
            encoded = students.encode(target_spm.decode(hyp.tokens.split()), out_type=str)
            converted.append(Hypothesis(tokens=" ".join(encoded), score=hyp.score, length=len(encoded)))
        out.append(converted)
    return out
