"""Evaluate one model on one evaluation set: beam and greedy decoding, BLEU and chrF, speed, size.

    python -m pipeline.evaluate --model work/models/teacher-<key>/model.pt --name teacher --set test \
        --split test --data work/data/<dir>/bin --ref work/data/<dir>/raw/test.en --spm work/data/<dir>/spm/spm.model \
        --json results/<experiment>/eval/teacher/test.json [--spec work/models/teacher-<key>/spec.json] \
        --beam-hyps results/<experiment>/eval/teacher/test.beam.txt --greedy-hyps results/<experiment>/eval/teacher/test.greedy.txt
    (an extra set: --src-text USER_RAW_SOURCE instead of --split; it is normalised and spm-encoded here)

    python -m pipeline.evaluate --backend ctranslate2 --ct2-model work/ct2/teacher-<key> --compute-type int8 \
        --name teacher --set test --src-pieces work/data/<dir>/spm/test.de --ref work/data/<dir>/raw/test.en \
        --json results/<experiment>/eval/teacher/test.ct2-int8.json
    (the same measurements with CTranslate2; the source as spm pieces or raw text, not a binarised split;
    the JSON adds "backend", "compute_type" and "ct2_model"; model_size holds model.bin's bytes and weight type)

Hypotheses are SentencePiece-decoded and Moses-detokenised, then scored by sacreBLEU against the
raw (unnormalised) reference, as anyone would score a system's plain-text output; the JSON keeps
sacreBLEU's signatures. Speed is measured after a warm-up batch, with the batch settings, threads
and device recorded beside it; with --speed-runs N the set is decoded N times and the fastest pass
counts (on a shared machine, interference only ever adds time). Model size: the backend's
(pipeline.model_size for a fairseq checkpoint). --spec: the model's spec.json, copied into the JSON
under "spec" unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from pipeline.cli import run
from pipeline.corpus import read_lines, write_lines
from pipeline.decoding import Backend, BatchSettings, Decoded, SearchOptions, add_decoding_args, backend_from_args
from pipeline.errors import ConfigError, DataError
from pipeline.spm import DEFAULT_MAX_POSITIONS, TextCodec, check_lengths, max_pieces_for

log = logging.getLogger("pipeline.evaluate")

# Our evaluation set names -> fairseq's split names in the binarised data.
FAIRSEQ_SPLIT = {"dev": "valid", "test": "test", "train": "train"}
MODES = ("beam", "greedy")


def score(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacreBLEU defaults) with their signatures."""
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "bleu": {
            "score": b.score,
            "signature": str(bleu.get_signature()),
            "text": f"{b} {bleu.get_signature()}",
            "precisions": b.precisions,
            "bp": b.bp,
            "sys_len": b.sys_len,
            "ref_len": b.ref_len,
        },
        "chrf": {"score": c.score, "signature": str(chrf.get_signature()), "text": f"{c} {chrf.get_signature()}"},
    }


def fastest_of(decode: Callable[[], Decoded], runs: int) -> tuple[Decoded, list[float]]:
    """Decode `runs` times: the first pass's hypotheses with the fastest pass's timing, and every pass's seconds."""
    if runs < 1:
        raise ConfigError(f"--speed-runs {runs}: must be at least 1")
    first = decode()
    stats, seconds = first.stats, [first.stats.seconds]
    for _ in range(runs - 1):
        again = decode().stats
        seconds.append(again.seconds)
        if again.seconds < stats.seconds:
            stats = again
    return Decoded(hypotheses=first.hypotheses, stats=stats), seconds


def read_spec(path: Path) -> dict[str, Any]:
    """A model's spec.json (its settings: name, variant, preset, alpha, temperature, ...), parsed, as it is."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--spec {path}: no such file (the model's spec.json, written beside it by training)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"--spec {path}: not a readable JSON file ({err})") from None
    if not isinstance(spec, dict):
        raise DataError(f"--spec {path}: a model spec must be a JSON object, not {type(spec).__name__}")
    return spec


def evaluate_mode(backend: Backend, lines: list[str], codec: TextCodec, refs: list[str], options: SearchOptions,
                  hyp_path: Path, speed_runs: int = 1) -> dict[str, Any]:
    """Decode the set (fastest of speed_runs passes, each after a warm-up batch), score it, write the hypotheses."""
    decoded, seconds = fastest_of(lambda: backend.decode(lines, options, warmup=True), speed_runs)
    return mode_result(decoded, codec, refs, options, options.batch(backend.default_batch), hyp_path, seconds)


def best_texts(decoded: Decoded, codec: TextCodec) -> list[str]:
    """Each sentence's best hypothesis as plain text (SentencePiece-decoded, detokenised as the codec does)."""
    return [codec.decode(nbest[0].tokens) for nbest in decoded.hypotheses]


def mode_result(decoded: Decoded, codec: TextCodec, refs: list[str], gen: SearchOptions, batch: BatchSettings,
                hyp_path: Path, run_seconds: list[float] | None = None) -> dict[str, Any]:
    """Scores and speed of a decoding (either backend's Decoded); hypotheses written as plain text.

    run_seconds: every timed pass (the speed is the fastest's), recorded beside the speed.
    """
    hyps = best_texts(decoded, codec)
    write_lines(hyp_path, hyps)
    stats = decoded.stats
    run_seconds = run_seconds or [stats.seconds]
    log.info("beam %d: %d sentences in %.2f s (%.1f sent/s, %.0f tok/s; fastest of %d: %s s)", gen.beam,
             stats.sentences, stats.seconds, stats.sentences_per_s, stats.target_tokens_per_s, len(run_seconds),
             " ".join(f"{t:.2f}" for t in run_seconds))
    return {
        **score(hyps, refs),
        "hypotheses": str(hyp_path),
        "settings": gen.search(),
        "speed": {**stats.as_dict(), "max_tokens": batch.max_tokens, "batch_size": batch.batch_size,
                  "runs": len(run_seconds), "run_seconds": run_seconds},
    }


def add_set_args(parser: argparse.ArgumentParser) -> None:
    """The evaluation set's flags: its name, its source (one of three forms), reference, data, spm, text handling."""
    parser.add_argument("--set", dest="set_name", required=True, help="evaluation set name for the report")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", help="binarised split of --data: dev, test (or fairseq's valid, test)")
    source.add_argument("--src-text", type=Path, help="raw source text (normalised and spm-encoded here)")
    source.add_argument("--src-pieces", type=Path, help="spm-encoded source text (as the data stage wrote it)")
    parser.add_argument("--ref", type=Path, required=True, help="raw reference text")
    parser.add_argument("--data", help="binarised data / dictionaries (default: from the checkpoint)")
    parser.add_argument("--spm", help="SentencePiece model (default: beside the model, else from the data directory)")
    parser.add_argument("--no-normalize", action="store_true", help="--src-text: skip Moses punctuation normalisation")
    parser.add_argument("--no-detok", action="store_true", help="skip Moses detokenisation of the output")


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set as the backend decodes it: source lines, raw references, the text codec, a description."""

    lines: list[str]
    refs: list[str]
    codec: TextCodec
    source: str


def open_set(args: argparse.Namespace, backend: Backend) -> EvalSet:
    """The set add_set_args' flags name, read for `backend`; a reference of another length is an error."""
    codec = TextCodec(backend.spm_model(args.spm), backend.source_lang, backend.target_lang,
                      normalize=not args.no_normalize, detokenize=not args.no_detok)
    if args.split:
        lines = backend.read_split(FAIRSEQ_SPLIT.get(args.split, args.split))
        source_desc = f"{backend.data_dir} split {args.split}"
    elif args.src_pieces:
        lines, source_desc = read_lines(args.src_pieces), str(args.src_pieces)
    else:
        # the data stage's policy for dev and test (pipeline.spm.check_lengths): too long is an error, never cut
        encoded = (codec.encode(line) for line in read_lines(args.src_text))
        lines = list(check_lengths(encoded, args.src_text, max_pieces_for(DEFAULT_MAX_POSITIONS)))
        source_desc = str(args.src_text)
    refs = read_lines(args.ref)
    if len(refs) != len(lines):
        raise DataError(f"{args.ref}: {len(refs)} reference lines but the source ({source_desc}) has {len(lines)}")
    return EvalSet(lines=lines, refs=refs, codec=codec, source=source_desc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fairseq checkpoint (required with --backend fairseq)")
    parser.add_argument("--name", help="model name for the report (default: the checkpoint's directory name)")
    parser.add_argument("--spec", type=Path, help="the model's spec.json: copied into the JSON under \"spec\"")
    add_set_args(parser)
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--beam-hyps", type=Path, help="beam hypotheses (plain text); default: JSON path .beam.txt")
    parser.add_argument("--greedy-hyps", type=Path, help="greedy hypotheses; default: JSON path .greedy.txt")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    add_decoding_args(parser, nbest=False, speed_runs=True)
    args = parser.parse_args()

    started = time.time()
    hyp_paths = {
        "beam": args.beam_hyps or args.json.with_suffix(".beam.txt"),
        "greedy": args.greedy_hyps or args.json.with_suffix(".greedy.txt"),
    }
    spec = read_spec(args.spec) if args.spec else None
    options = SearchOptions.from_args(args)
    backend = backend_from_args(args)
    evalset = open_set(args, backend)
    codec, lines, refs, source_desc = evalset.codec, evalset.lines, evalset.refs, evalset.source

    record = backend.model_record()
    result: dict[str, Any] = {
        "model": args.name or Path(record["checkpoint"]).parent.name,
        **record,
        "set": args.set_name,
        "source": source_desc,
        "reference": str(args.ref),
        "src": backend.source_lang,
        "tgt": backend.target_lang,
        "sentences": len(refs),
        "runtime": backend.runtime_info(),
        **({"spec": spec} if spec is not None else {}),
    }
    for mode in args.modes:
        mode_options = options if mode == "beam" else replace(options, beam=1)
        result[mode] = evaluate_mode(backend, lines, codec, refs, mode_options, hyp_paths[mode], args.speed_runs)
    result["model_size"] = backend.model_size()
    result["seconds_total"] = time.time() - started
    write_lines(args.json, [json.dumps(result, indent=2)])
    for mode in args.modes:
        log.info("%s %s %s (%s): %s | %s", result["model"], args.set_name, mode, backend.describe_device(),
                 result[mode]["bleu"]["text"], result[mode]["chrf"]["text"])


if __name__ == "__main__":
    run(main)
