"""CTranslate2 backend: convert a fairseq Transformer checkpoint once, then decode several times faster.

    python -m pipeline.ct2 convert --model work/models/teacher/model.pt --out work/ct2/teacher \
        [--data work/data/bin] [--spm work/data/spm/spm.model] [--quantization float32]

    model = load("work/ct2/teacher", compute_type="auto", threads=2)
    nbest = decode_lines(model, ["▁Ein ▁Mann ...", ...], GenerationSettings(beam=5, nbest=5))

decode_lines has the contract of pipeline.decode.decode_lines (an n-best list of hypotheses with
tokens, score, length per spm line, in input order, fairseq's score convention) and takes the same
settings objects, so a caller switches backend by the model it passes: a backend changes speed,
never the shape or order of the data. Batches are formed as fairseq forms them (sorted by source
length, capped by padded tokens and/or sentences) and each batch's length cap is fairseq's:
max_len_a * (longest source + EOS) + max_len_b. A hypothesis that hits the cap gets the EOS
log-probability that fairseq's forced EOS adds to its score (scored by CTranslate2). Batches are
submitted asynchronously, so inter_threads translators decode different batches at once.

Only convert() imports torch and fairseq: a converted model decodes without them (pipeline.translate,
the exported student). The conversion writes float32 weights unless told otherwise; the compute type
(int8, float16, ...) is applied when a model is loaded, for the device the job got, which is only
known then. A converted directory also holds the SentencePiece model and pipeline.json (languages,
position limits, origin), so it translates raw text on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ctranslate2

from pipeline.cli import run
from pipeline.corpus import CorpusError
from pipeline.search import BatchSettings, Decoded, DecodeStats, GenerationSettings, Hypothesis  # noqa: F401 (API)
from pipeline.spm import TextCodec  # noqa: F401 (API: torch-free, shared by both backends)

log = logging.getLogger("pipeline.ct2")

META = "pipeline.json"  # our metadata beside CTranslate2's own files
SPM = "spm.model"
VMAP = "vmap.txt"  # the vocabulary shortlist the converter copies in (pipeline.vmap)
BACKENDS = ("fairseq", "ctranslate2")
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
# compute_type "auto": the type that decoded fastest on each kind of device. CPU: int8 (it runs as
# int8_float32): fastest in every run of pipeline.benchmarks.ct2_vs_fairseq on three 2-core CPUs with the
# default config's 3+3 d=256 teacher (4k vocabulary), 5,000 sentences, beam 5; e.g. on the AMX Xeon of
# 2026-12-02: int8 531.5 sent/s, int16 350.3, float32 283.4, fairseq 138.5 (README "Performance").
# CUDA: float16 (tensor cores), not measured (no GPU here).
DEFAULT_COMPUTE_TYPE = {"cpu": "int8", "cuda": "float16"}
# inter_threads x intra_threads when neither is given, on CPU: "all" = one single-threaded
# translator per thread (2x1 beat 1x2 for both compute types in the benchmark above), else one
# translator with every thread.
DEFAULT_INTER_THREADS = "all"
# Batches when a caller names none (pipeline.translate on a plain conversion), on CPU: 8 sentences, at
# most 1,000 padded tokens (config ct2.batch_size / max_tokens; small batches decode fastest with
# single-threaded translators, README "Performance"). On a GPU: fairseq's 6,000 tokens.
DEFAULT_CPU_BATCH = BatchSettings(max_tokens=1000, batch_size=8)
PAD = "<blank>"  # fairseq's <pad> as the converter names it: fairseq's search never generates it
# Score differences that remain (float32, same hypothesis): CTranslate2 forbids EOS before
# min_len by masking the logits before the softmax, fairseq after it, so a hypothesis' score is
# higher here by -log(1 - p(EOS first)), the same for every hypothesis of a sentence (rankings
# unchanged); negligible for a trained model, about 0.01 for an untrained one.


# ----------------------------------------------------------------------------------------------
# Settings and results come from pipeline.search (torch-free, shared with pipeline.decode); these
# protocols let any object with the same fields be passed.


class GenerationLike(Protocol):
    beam: int
    nbest: int
    lenpen: float
    max_len_a: float
    max_len_b: int
    min_len: int
    unkpen: float


class BatchLike(Protocol):
    max_tokens: int | None
    batch_size: int | None


# ----------------------------------------------------------------------------------------------
# Devices, compute types, threads


def pick_device(cpu: bool = False) -> str:
    """cuda when CTranslate2 sees a GPU (pipeline.devices may have narrowed CUDA_VISIBLE_DEVICES), else cpu."""
    return "cuda" if not cpu and ctranslate2.get_cuda_device_count() > 0 else "cpu"


def parse_compute_type(value: str | None) -> dict[str, str] | str:
    """'auto', one compute type, or one per device: 'cpu=float32,cuda=float16' (what the rules pass)."""
    value = (value or "auto").strip()
    if "=" not in value:
        if value != "auto" and value not in COMPUTE_TYPES:
            raise CorpusError(f"compute type {value}: not one of auto, {', '.join(COMPUTE_TYPES)}")
        return value
    table: dict[str, str] = {}
    for item in value.split(","):
        device, _, ctype = item.partition("=")
        if device.strip() not in DEFAULT_COMPUTE_TYPE or ctype.strip() not in (*COMPUTE_TYPES, "auto"):
            raise CorpusError(f"compute type {value}: expected DEVICE=TYPE pairs (devices cpu, cuda; types {', '.join(COMPUTE_TYPES)})")
        table[device.strip()] = ctype.strip()
    return table


def resolve_compute_type(compute_type: str | None, device: str) -> str:
    """The compute type to load with: 'auto' (or None) is the fastest measured for the device.

    An explicit type the device lacks is an error; 'auto' on a GPU without float16 falls back to float32.
    """
    parsed = parse_compute_type(compute_type)
    chosen = parsed.get(device, "auto") if isinstance(parsed, dict) else parsed
    supported = ctranslate2.get_supported_compute_types(device)
    if chosen == "auto":
        chosen = DEFAULT_COMPUTE_TYPE[device] if DEFAULT_COMPUTE_TYPE[device] in supported else "float32"
    if chosen not in supported:
        raise CorpusError(f"compute type {chosen} is not supported on {device} here (supported: {', '.join(sorted(supported))})")
    return chosen


def split_threads(threads: int | None, inter: int | None = None, intra: int | None = None,
                  device: str = "cpu") -> tuple[int, int]:
    """inter_threads (translators decoding different batches) x intra_threads (threads per translator).

    Default on CPU: one single-threaded translator per thread of the job (DEFAULT_INTER_THREADS,
    measured fastest on 2 cores); on a GPU one translator (the GPU does the work). Given one of the
    two, the other divides the job's threads.
    """
    threads = max(1, threads or os.cpu_count() or 1)
    if inter is None and intra is None:
        if device == "cpu" and DEFAULT_INTER_THREADS == "all":
            return threads, 1
        return 1, threads
    if inter is None:
        return max(1, threads // intra), intra  # type: ignore[operator]
    if intra is None:
        return inter, max(1, threads // inter)
    return inter, intra


# ----------------------------------------------------------------------------------------------
# Conversion


def _metadata(path: Path) -> dict[str, Any]:
    meta = path / META
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CorpusError(f"{meta}: unreadable ({err})") from None


def convert(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    spm: str | os.PathLike | None = None,
    quantization: str = "float32",
    extra_meta: dict[str, Any] | None = None,
    vmap: str | os.PathLike | None = None,
) -> Path:
    """Convert a fairseq Transformer checkpoint into a CTranslate2 model directory (with spm.model, pipeline.json).

    vmap: a vocabulary shortlist (pipeline.vmap) stored with the model; decoding uses it only when
    asked (load(..., use_vmap=True)), since a shortlist changes the output.

    The model is loaded by pipeline.decode.load_model (dictionaries, languages and plugins resolved
    as for decoding; stripped checkpoints, whose fast-path weight copies fairseq rebuilds) and
    handed to CTranslate2's FairseqConverter, whose own loader assumes a pickled-args checkpoint
    beside its data. Files are written to a temporary directory and moved in, model.bin last, so
    a model.bin is always a finished conversion.
    """
    import torch
    from ctranslate2.converters import fairseq as fairseq_converter

    from pipeline.decode import find_spm, load_model

    out = Path(out)
    if quantization not in COMPUTE_TYPES:
        raise CorpusError(f"quantization {quantization}: not one of {', '.join(COMPUTE_TYPES)}")
    if vmap is not None and not Path(vmap).is_file():
        raise CorpusError(f"{vmap}: no such vocabulary map (build one with python -m pipeline.vmap)")
    began = time.perf_counter()
    lm = load_model(checkpoint, data_dir=data_dir, cpu=True)
    spm_path = find_spm(lm, spm)
    model_cfg = lm.cfg.model

    class LoadedModelConverter(fairseq_converter.FairseqConverter):
        def __init__(self) -> None:  # the model is already loaded; nothing of the base's state is used
            pass

        def _load(self):
            spec = fairseq_converter._get_model_spec(model_cfg)
            with torch.no_grad():
                fairseq_converter.set_transformer_encoder(spec.encoder, lm.model.encoder)
                fairseq_converter.set_transformer_decoder(spec.decoder, lm.model.decoder)
            spec.register_source_vocabulary(fairseq_converter._get_vocab(lm.task.source_dictionary))
            spec.register_target_vocabulary(fairseq_converter._get_vocab(lm.task.target_dictionary))
            spec.config.decoder_start_token = spec.config.eos_token  # fairseq starts decoding with EOS
            spec.config.add_source_eos = True
            # fairseq's LayerNorm epsilon (torch's 1e-5); CTranslate2 assumes 1e-6 when none is given
            spec.config.layer_norm_epsilon = float(lm.model.encoder.layers[0].self_attn_layer_norm.eps)
            return spec

    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            LoadedModelConverter().convert(str(tmp), vmap=str(vmap) if vmap else None, quantization=quantization,
                                           force=True)
        except (ValueError, NotImplementedError) as err:  # the converter's configuration checks
            raise CorpusError(f"{lm.path}: CTranslate2 cannot convert this model ({err})") from None
        shutil.copyfile(spm_path, tmp / SPM)
        meta = {
            "format": "ctranslate2",
            "source_lang": lm.source_lang,
            "target_lang": lm.target_lang,
            "max_source_positions": int(lm.model.max_positions()[0]),
            "max_target_positions": int(lm.model.max_positions()[1]),
            "quantization": quantization,
            "checkpoint": str(lm.path),
            "data_dir": str(lm.data_dir),
            "spm": SPM,
            "spm_source": str(spm_path),
            **({"vmap": VMAP, "vmap_source": str(vmap)} if vmap else {}),
            "ctranslate2": ctranslate2.__version__,
            "conversion_seconds": round(time.perf_counter() - began, 2),
            **(extra_meta or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "model.bin"] + ["model.bin"]:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s (%s weights, %.1f s)", lm.path, out, quantization, time.perf_counter() - began)
    return out


# ----------------------------------------------------------------------------------------------
# Loading and decoding


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


def model_dir(path: str | os.PathLike) -> Path:
    """A CTranslate2 model directory (model.bin given means its directory), or a clear error."""
    path = Path(path)
    if path.name == "model.bin":
        path = path.parent
    if not (path / "model.bin").is_file():
        raise CorpusError(f"{path}: not a CTranslate2 model directory (no model.bin)")
    return path


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
    export from the configuration), else DEFAULT_COMPUTE_TYPE. use_vmap: decode with the vocabulary
    shortlist stored at conversion (an error if there is none); None: the directory's own choice
    (pipeline.json "use_vmap", set by an export with a shortlist), else no.
    """
    path = model_dir(path)
    meta = _metadata(path)
    if use_vmap is None:
        use_vmap = bool(meta.get("use_vmap", False))
    if use_vmap and not (path / VMAP).is_file():
        raise CorpusError(f"{path}: no {VMAP} to decode with (convert with --vmap FILE, built by python -m pipeline.vmap)")
    device = pick_device(cpu)
    if compute_type in (None, "", "auto") and meta.get("compute_type"):
        compute_type = meta["compute_type"]
    ctype = resolve_compute_type(compute_type, device)
    inter, intra = split_threads(threads, inter_threads, intra_threads, device)
    try:
        translator = ctranslate2.Translator(str(path), device=device, compute_type=ctype,
                                            inter_threads=inter, intra_threads=intra)
    except (RuntimeError, ValueError) as err:
        raise CorpusError(f"{path}: CTranslate2 cannot load the model ({err})") from None
    # what CTranslate2 runs (e.g. int8 is int8_float32 on a CPU)
    actual = getattr(translator, "compute_type", ctype)
    model = Ct2Model(path=path, translator=translator, device=device, compute_type=actual,
                     inter_threads=inter, intra_threads=intra, meta=meta, requested_compute_type=ctype,
                     use_vmap=use_vmap)
    log.info("loaded %s on %s%s", path, model.describe_device(), " with its vocabulary shortlist" if use_vmap else "")
    return model


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


def _search_options(model: Ct2Model, gen: GenerationLike) -> dict[str, Any]:
    if gen.unkpen not in (0, 0.0) and gen.unkpen != float("inf"):
        raise CorpusError(f"unkpen {gen.unkpen}: the ctranslate2 backend supports only 0 or inf (never <unk>)")
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
        "max_input_length": 0,  # sources are truncated here, as pipeline.decode truncates them
        "use_vmap": model.use_vmap,
    }


def decode(model: Ct2Model, lines: Sequence[str], gen: GenerationLike, batch: BatchLike | None = None,
           warmup: bool = False, sort: bool = True) -> Decoded:
    """Decode spm-encoded lines; n-best lists in input order, with timing (see pipeline.decode.decode_dataset).

    warmup: decode the first batch once before the clock starts. sort: batch by length (see make_batches).
    """
    batch = batch or BatchSettings()
    options = _search_options(model, gen)
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
        _add_forced_eos(model, sources, results, capped, gen.lenpen, batch)  # type: ignore[arg-type]
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


def _add_forced_eos(model: Ct2Model, sources: list[list[str]], results: list[list[Hypothesis]],
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


def decode_lines(model: Ct2Model, lines: Sequence[str], gen: GenerationLike, batch: BatchLike | None = None
                 ) -> list[list[Hypothesis]]:
    """n-best hypotheses with scores for spm-encoded source lines, in input order (as pipeline.decode.decode_lines)."""
    if not lines:
        return []
    return decode(model, lines, gen, batch).hypotheses


# ----------------------------------------------------------------------------------------------
# Raw text, without torch: the same processing as pipeline.decode.TextCodec


class Ct2Translator:
    """pipeline.translate's backend for a CTranslate2 directory: spm lines in, best target pieces out."""

    def __init__(self, model: Ct2Model, gen: GenerationLike, batch: BatchLike, spm_model: Path | None = None,
                 src: str | None = None, tgt: str | None = None):
        self.model, self.gen, self.batch = model, gen, batch
        spm_path = spm_model or model.spm_model
        if spm_path is None:
            raise CorpusError(f"{model.path}: no {SPM} in the model directory: pass --spm PATH")
        self.spm_model = Path(spm_path)
        source_lang, target_lang = src or model.source_lang, tgt or model.target_lang
        if source_lang is None or target_lang is None:
            raise CorpusError(f"{model.path}: no {META} naming the languages: pass --src and --tgt")
        self.source_lang, self.target_lang = source_lang, target_lang
        # the data stage's setting, recorded at conversion (pipeline.translate's --no-normalize still wins)
        self.normalize = bool(model.meta.get("normalize_punctuation", True))

    def translate_pieces(self, lines: list[str]) -> list[str]:
        return [nbest[0].tokens for nbest in decode_lines(self.model, lines, self.gen, self.batch)]


# ----------------------------------------------------------------------------------------------
# Command-line options shared by the stage CLIs that can decode with either backend


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --ct2-model, --compute-type, --inter-threads, --intra-threads, --vmap."""
    group = parser.add_argument_group("decoding backend")
    group.add_argument("--backend", choices=BACKENDS, default="fairseq", help="decoder (default: fairseq)")
    group.add_argument("--ct2-model", type=Path, help="--backend ctranslate2: the converted model directory")
    group.add_argument("--compute-type", default="auto",
                       help="--backend ctranslate2: a compute type, or one per device (cpu=float32,cuda=float16); "
                       f"default auto: {DEFAULT_COMPUTE_TYPE}")
    group.add_argument("--inter-threads", type=int, help="--backend ctranslate2: translators decoding batches at once")
    group.add_argument("--intra-threads", type=int, help="--backend ctranslate2: threads per translator")
    group.add_argument("--vmap", action="store_true", default=None,
                       help="--backend ctranslate2: decode with the model's vocabulary shortlist (faster, changes output)")


def load_from_args(args: argparse.Namespace, threads: int | None = None) -> Ct2Model:
    """The CTranslate2 model that add_backend_arguments' options name (--ct2-model is required then)."""
    if args.ct2_model is None:
        raise CorpusError("--backend ctranslate2 needs --ct2-model DIR (a converted model, see pipeline.ct2 convert)")
    return load(args.ct2_model, compute_type=args.compute_type, threads=threads,
                inter_threads=args.inter_threads, intra_threads=args.intra_threads, cpu=getattr(args, "cpu", False),
                use_vmap=args.vmap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="fairseq checkpoint -> CTranslate2 model directory")
    c.add_argument("--model", type=Path, required=True, help="fairseq checkpoint")
    c.add_argument("--out", type=Path, required=True, help="output directory (model.bin, spm.model, pipeline.json, ...)")
    c.add_argument("--data", type=Path, help="dictionaries (default: found from the checkpoint)")
    c.add_argument("--spm", type=Path, help="SentencePiece model (default: found from the data directory)")
    c.add_argument("--quantization", default="float32", choices=COMPUTE_TYPES,
                   help="weights as stored (default float32: any compute type can be chosen when loading)")
    c.add_argument("--vmap", type=Path, help="vocabulary shortlist to store with the model (python -m pipeline.vmap)")
    c.add_argument("--no-normalize", action="store_true",
                   help="record that the data stage did not Moses-normalise punctuation (translation then skips it)")
    args = parser.parse_args()
    convert(args.model, args.out, data_dir=args.data, spm=args.spm, quantization=args.quantization,
            extra_meta={"normalize_punctuation": not args.no_normalize}, vmap=args.vmap)


if __name__ == "__main__":
    run(main)
