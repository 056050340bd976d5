"""The CTranslate2 backend: a converted model (pipeline.decoding.convert) decoded several times faster than fairseq.

    model = load("work/ct2/teacher-<key>", compute_type="auto", threads=2)
    nbest = decode_lines(model, ["▁Ein ▁Mann ...", ...], SearchOptions(beam=5, nbest=5))

decode has the contract of the fairseq backend (an n-best list of hypotheses with tokens, score,
length per spm line, in input order, fairseq's score convention), so a backend changes speed, never
the shape or order of the data. Batches are formed as fairseq forms them
(pipeline.decoding.batching.make_batches) and each batch's length cap is fairseq's:
max_len_a * (longest source + EOS) + max_len_b. A hypothesis that hits the cap gets the EOS
log-probability that fairseq's forced EOS adds to its score (add_forced_eos_scores). Batches are
submitted asynchronously, so inter_threads translators decode different batches at once.

Torch-free: a converted model or an export decodes without torch or fairseq installed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.decoding.batching import BatchLike, BatchSettings, ct2_batch, make_batches
from pipeline.decoding.compute import resolve_compute_type, split_threads
from pipeline.decoding.ct2_dir import META, SPM, VMAP, model_dir, read_metadata
from pipeline.decoding.device import pick_device
from pipeline.decoding.options import SearchOptions
from pipeline.decoding.results import Decoded, DecodeStats, Hypothesis
from pipeline.errors import BackendError, ModelError

log = logging.getLogger("pipeline.decoding.ct2_backend")

PAD = "<blank>"  # fairseq's <pad> as the converter names it: fairseq's search never generates it
# Score differences that remain (float32, same hypothesis): CTranslate2 forbids EOS before
# min_len by masking the logits before the softmax, fairseq after it, so a hypothesis' score is
# higher here by -log(1 - p(EOS first)), the same for every hypothesis of a sentence (rankings
# unchanged); negligible for a trained model, about 0.01 for an untrained one.


def ct2_device(cpu: bool = False) -> str:
    """The device a CTranslate2 model is loaded on (pipeline.decoding.device's policy, CTranslate2's GPU count)."""
    import ctranslate2

    return pick_device(cpu, ctranslate2.get_cuda_device_count)


@dataclass
class Ct2Model:
    """A CTranslate2 translator with what decoding needs from the model's metadata."""

    path: Path
    translator: Any  # ctranslate2.Translator
    device: str
    compute_type: str  # what CTranslate2 runs (int8 runs as int8_float32 on a CPU)
    inter_threads: int
    intra_threads: int
    meta: dict[str, Any]
    requested_compute_type: str = ""  # the type asked for, resolved for the device
    use_vmap: bool = False  # decode against the model's vocabulary shortlist (vmap.txt)

    @property
    def source_lang(self) -> str | None:
        return self.meta.get("source_lang")

    @property
    def target_lang(self) -> str | None:
        return self.meta.get("target_lang")

    @property
    def max_source_positions(self) -> int:
        return int(self.meta.get("max_source_positions", 1024))

    @property
    def max_target_positions(self) -> int:
        return int(self.meta.get("max_target_positions", 1024))

    @property
    def spm_model(self) -> Path | None:
        name = self.meta.get("spm", SPM)
        return self.path / name if (self.path / name).is_file() else None

    def describe_device(self) -> str:
        return f"{self.device} ({self.compute_type}, {self.inter_threads}x{self.intra_threads} threads)"

    def runtime_info(self) -> dict[str, Any]:
        import ctranslate2

        return {
            "backend": "ctranslate2",
            "device": self.device,
            "compute_type": self.compute_type,
            "requested_compute_type": self.requested_compute_type,
            "weights": self.meta.get("quantization"),
            "inter_threads": self.inter_threads,
            "intra_threads": self.intra_threads,
            "vocabulary_shortlist": self.use_vmap,
            "ctranslate2": ctranslate2.__version__,
        }


def load(
    path: str | os.PathLike,
    compute_type: str | None = "auto",
    threads: int | None = None,
    inter_threads: int | None = None,
    intra_threads: int | None = None,
    cpu: bool = False,
    use_vmap: bool | None = None,
) -> Ct2Model:
    """Load a converted model on CUDA when CTranslate2 sees a GPU (else CPU) with the compute type for it.

    compute_type 'auto': the directory's own choice (pipeline.json "compute_type", written by the
    export from the configuration), else compute.DEFAULT_COMPUTE_TYPE. use_vmap: decode with the
    vocabulary shortlist stored at conversion (an error if there is none); None: the directory's own
    choice (pipeline.json "use_vmap", set by an export with a shortlist), else no.
    """
    import ctranslate2

    path = model_dir(path)
    meta = read_metadata(path)
    if use_vmap is None:
        use_vmap = bool(meta.get("use_vmap", False))
    if use_vmap and not (path / VMAP).is_file():
        raise ModelError(f"{path}: no {VMAP} to decode with (convert with --vmap FILE, built by python -m pipeline.vmap)")
    device = ct2_device(cpu)
    if compute_type in (None, "", "auto") and meta.get("compute_type"):
        compute_type = meta["compute_type"]
    ctype = resolve_compute_type(compute_type, device)
    inter, intra = split_threads(threads, inter_threads, intra_threads, device)
    try:
        translator = ctranslate2.Translator(str(path), device=device, compute_type=ctype,
                                            inter_threads=inter, intra_threads=intra)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"{path}: CTranslate2 cannot load the model ({err})") from None
    # what CTranslate2 runs (e.g. int8 is int8_float32 on a CPU)
    actual = getattr(translator, "compute_type", ctype)
    model = Ct2Model(path=path, translator=translator, device=device, compute_type=actual,
                     inter_threads=inter, intra_threads=intra, meta=meta, requested_compute_type=ctype,
                     use_vmap=use_vmap)
    log.info("loaded %s on %s%s", path, model.describe_device(), " with its vocabulary shortlist" if use_vmap else "")
    return model


def _translate_options(model: Ct2Model, gen: SearchOptions) -> dict[str, Any]:
    if gen.unkpen not in (0, 0.0) and gen.unkpen != float("inf"):
        raise BackendError(f"unkpen {gen.unkpen}: the ctranslate2 backend supports only 0 or inf (never <unk>)")
    return {
        "beam_size": gen.beam,
        "num_hypotheses": gen.nbest,
        "length_penalty": gen.lenpen,
        "min_decoding_length": gen.min_len,
        "disable_unk": gen.unkpen == float("inf"),
        # Not suppressing <pad> (fairseq sets its log-probability to -inf after the softmax; a
        # suppression here would renormalise every step's distribution without it and shift the
        # scores): label-smoothed training never makes it the best token; decode() counts any.
        "return_scores": True,
        "max_input_length": 0,  # sources are truncated here, as the fairseq backend truncates them
        "use_vmap": model.use_vmap,
    }


def decode(model: Ct2Model, lines: Sequence[str], gen: SearchOptions, batch: BatchLike | None = None,
           warmup: bool = False, sort: bool = True) -> Decoded:
    """Decode spm-encoded lines; n-best lists in input order, with timing (as the fairseq backend's decode_dataset).

    batch: default gen's batch, else DEFAULT_MAX_TOKENS tokens. warmup: decode the first batch once
    before the clock starts. sort: batch by length (see make_batches).
    """
    batch = batch or gen.batch()
    options = _translate_options(model, gen)
    keep = model.max_source_positions - 1  # pieces, leaving room for EOS (fairseq's truncation)
    sources = [line.split() for line in lines]
    truncated = sum(len(s) > keep for s in sources)
    if truncated:
        log.warning("%d source lines longer than %d tokens were truncated", truncated, keep + 1)
        sources = [s[:keep] for s in sources]
    lengths = [len(s) + 1 for s in sources]  # with EOS, as fairseq counts them
    groups = make_batches(lengths, batch, sort)
    max_len = model.max_target_positions - 1

    def cap(group: list[int]) -> int:  # fairseq: int(a * padded source length + b), at most max positions - 1
        return max(1, min(int(gen.max_len_a * max(lengths[i] for i in group) + gen.max_len_b), max_len))

    def submit(group: list[int]):
        return model.translator.translate_batch([sources[i] for i in group], max_batch_size=0, asynchronous=True,
                                                max_decoding_length=cap(group), **options)

    stats = DecodeStats()
    if warmup and groups:
        for pending in submit(groups[0]):
            pending.result()
        stats.warmup_batches = 1
    start = time.perf_counter()
    submitted = [(group, cap(group), submit(group)) for group in groups]
    results: list[list[Hypothesis] | None] = [None] * len(lines)
    capped: list[tuple[int, int]] = []
    empty = 0
    for group, limit, pendings in submitted:
        for i, pending in zip(group, pendings, strict=True):
            out = pending.result()
            hyps = [Hypothesis(" ".join(toks), float(score), len(toks)) for toks, score in zip(out.hypotheses, out.scores, strict=True)]
            capped += [(i, k) for k, h in enumerate(hyps) if h.length >= limit]
            if len(hyps) < gen.nbest:  # CTranslate2 returns one empty hypothesis for an empty source
                empty += 1
                hyps += [Hypothesis(hyps[-1].tokens, hyps[-1].score, hyps[-1].length) if hyps else Hypothesis("", 0.0, 0)
                         for _ in range(gen.nbest - len(hyps))]
            results[i] = hyps
        stats.batches += 1
    if capped:
        add_forced_eos_scores(model, sources, results, capped, gen.lenpen, batch)  # type: ignore[arg-type]
    stats.seconds = time.perf_counter() - start
    padded = sum(PAD in h.tokens.split() for r in results if r for h in r)
    if padded:
        log.warning("%d hypotheses contain %s (fairseq never generates it): is the model trained?", padded, PAD)
    if empty:
        log.warning("%d empty source lines: empty hypotheses (fairseq would decode its EOS-only source)", empty)
    stats.sentences = len(lines)
    stats.capped = len(capped)
    stats.target_tokens = sum(r[0].length for r in results if r)
    return Decoded(hypotheses=results, stats=stats)  # type: ignore[arg-type]


def add_forced_eos_scores(model: Ct2Model, sources: list[list[str]], results: list[list[Hypothesis]],
                          capped: list[tuple[int, int]], lenpen: float, batch: BatchLike) -> None:
    """Score capped hypotheses as fairseq does: it forces EOS at the cap and counts its log-probability.

    CTranslate2 stops without EOS; its score is the tokens' log-probability / length**lenpen. The
    n-best lists concerned are re-sorted by the corrected score (fairseq sorts its finished hypotheses).
    """
    targets = [results[i][k].tokens.split() for i, k in capped]
    scored = model.translator.score_batch(
        [sources[i] for i, _ in capped], targets, max_input_length=0,
        max_batch_size=batch.max_tokens or batch.batch_size or 0,
        batch_type="tokens" if batch.max_tokens else "examples",
    )
    touched = set()
    for (i, k), result in zip(capped, scored, strict=True):
        hyp = results[i][k]
        raw = hyp.score * (hyp.length ** lenpen if hyp.length else 1.0)
        hyp.score = (raw + result.log_probs[-1]) / (hyp.length + 1) ** lenpen
        touched.add(i)
    for i in touched:
        results[i].sort(key=lambda h: -h.score)


def decode_lines(model: Ct2Model, lines: Sequence[str], gen: SearchOptions, batch: BatchLike | None = None
                 ) -> list[list[Hypothesis]]:
    """n-best hypotheses with scores for spm-encoded source lines, in input order."""
    if not lines:
        return []
    return decode(model, lines, gen, batch).hypotheses


class Ct2Backend:
    """A converted model behind the Backend interface (pipeline.decoding.backend)."""

    name = "ctranslate2"

    def __init__(self, model: Ct2Model, src: str | None = None, tgt: str | None = None):
        self.model = model
        self.path: Path = model.path
        source_lang, target_lang = src or model.source_lang, tgt or model.target_lang
        if source_lang is None or target_lang is None:
            raise ModelError(f"{model.path}: no {META} naming the languages (convert with python -m pipeline.ct2 "
                             "convert, or pass --src and --tgt)")
        self.source_lang: str = source_lang
        self.target_lang: str = target_lang
        self.device: str = model.device
        self.data_dir: Path | None = Path(model.meta["data_dir"]) if model.meta.get("data_dir") else None
        # the data stage's setting, recorded at conversion
        self.normalize_punctuation = bool(model.meta.get("normalize_punctuation", True))
        # the batch when the caller names none: the export's recorded batch, else the device's default
        self.default_batch: BatchSettings = ct2_batch(SearchOptions(), model.meta, model.device)

    def decode(self, lines: Sequence[str], options: SearchOptions, warmup: bool = False) -> Decoded:
        if not lines:
            return Decoded(hypotheses=[])
        return decode(self.model, lines, options, options.batch(self.default_batch), warmup=warmup)

    def read_split(self, split: str) -> list[str]:
        raise BackendError("--backend ctranslate2 reads text, not a binarised split: give --src-pieces or --src-text")

    def spm_model(self, override: str | Path | None = None) -> Path:
        if override is not None:
            if not Path(override).is_file():
                raise ModelError(f"--spm {override}: no such SentencePiece model")
            return Path(override)
        if self.model.spm_model is None:
            raise ModelError(f"{self.path}: no {SPM} in the model directory: pass --spm PATH")
        return self.model.spm_model

    def describe_device(self) -> str:
        return self.model.describe_device()

    def runtime_info(self) -> dict[str, Any]:
        return self.model.runtime_info()

    def model_record(self) -> dict[str, Any]:
        return {
            "checkpoint": self.model.meta.get("checkpoint", str(self.path)),
            "backend": "ctranslate2",
            "compute_type": self.model.requested_compute_type,  # as asked (runtime.compute_type: as run)
            "ct2_model": str(self.path),
        }

    def model_size(self) -> dict[str, Any]:
        return {"model_bin_bytes": (self.path / "model.bin").stat().st_size, "weights": self.model.meta.get("quantization")}


def open_ct2(path: str | Path, compute_type: str | None = "auto", threads: int | None = None,
             inter_threads: int | None = None, intra_threads: int | None = None, cpu: bool = False,
             use_vmap: bool | None = None, src: str | None = None, tgt: str | None = None) -> Ct2Backend:
    return Ct2Backend(load(path, compute_type=compute_type, threads=threads, inter_threads=inter_threads,
                           intra_threads=intra_threads, cpu=cpu, use_vmap=use_vmap), src=src, tgt=tgt)
