"""Evaluate one model on one evaluation set: beam and greedy decoding, BLEU and chrF, speed, size.

    python -m pipeline.evaluate --model work/models/teacher/model.pt --name teacher --set test \
        --split test --data work/data/bin --ref work/data/raw/test.en --spm work/data/spm/spm.model \
        --json results/eval/teacher/test.json \
        --beam-hyps results/eval/teacher/test.beam.txt --greedy-hyps results/eval/teacher/test.greedy.txt
    (an extra set: --src-text USER_RAW_SOURCE instead of --split; it is normalised and spm-encoded here)

    python -m pipeline.evaluate --backend ctranslate2 --ct2-model work/ct2/teacher --compute-type int8 \
        --name teacher --set test --src-pieces work/data/spm/test.de --ref work/data/raw/test.en \
        --json results/eval/teacher/test.ct2-int8.json
    (the same measurements with CTranslate2; the source as spm pieces or raw text, not a binarised split;
    the JSON adds "backend" and "compute_type"; model_size holds model.bin's bytes and weight type)

Hypotheses are SentencePiece-decoded and Moses-detokenised, then scored by sacreBLEU against the
raw (unnormalised) reference, as anyone would score a system's plain-text output; the JSON keeps
sacreBLEU's signatures. Speed is measured after a warm-up batch, with the batch settings, threads
and device recorded beside it; with --speed-runs N the set is decoded N times and the fastest pass
counts (on a shared machine, interference only ever adds time: with one pass, the same student
decoded dev and test at 130 and 94 sentences/s in two sequential jobs on this project's 2-core
machine; with the fastest of three, at 186 and 209). Model size (unique parameters, stripped
checkpoint bytes) comes from pipeline.model_size.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sacrebleu.metrics import BLEU, CHRF

from pipeline import ct2
from pipeline.cli import run
from pipeline.corpus import CorpusError, read_lines, write_lines
from pipeline.decode import (
    BatchSettings,
    GenerationSettings,
    LoadedModel,
    TextCodec,
    decode_dataset,
    find_spm,
    lines_dataset,
    load_model,
    runtime_info,
    split_dataset,
)
from pipeline.model_size import model_size
from pipeline.search import Decoded

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
        raise CorpusError(f"--speed-runs {runs}: must be at least 1")
    first = decode()
    stats, seconds = first.stats, [first.stats.seconds]
    for _ in range(runs - 1):
        again = decode().stats
        seconds.append(again.seconds)
        if again.seconds < stats.seconds:
            stats = again
    return Decoded(hypotheses=first.hypotheses, stats=stats), seconds


def evaluate_mode(
    lm: LoadedModel, dataset, codec: TextCodec, refs: list[str], gen: GenerationSettings, batch: BatchSettings,
    hyp_path: Path, speed_runs: int = 1,
) -> dict[str, Any]:
    decoded, seconds = fastest_of(lambda: decode_dataset(lm, dataset, gen, batch, warmup=True), speed_runs)
    return mode_result(decoded, codec, refs, gen, batch, hyp_path, seconds)


def mode_result(decoded, codec, refs: list[str], gen: GenerationSettings, batch: BatchSettings,
                hyp_path: Path, run_seconds: list[float] | None = None) -> dict[str, Any]:
    """Scores and speed of a decoding (either backend's Decoded); hypotheses written as plain text.

    run_seconds: every timed pass (the speed is the fastest's), recorded beside the speed.
    """
    hyps = [codec.decode(nbest[0].tokens) for nbest in decoded.hypotheses]
    write_lines(hyp_path, hyps)
    stats = decoded.stats
    run_seconds = run_seconds or [stats.seconds]
    log.info("beam %d: %d sentences in %.2f s (%.1f sent/s, %.0f tok/s; fastest of %d: %s s)", gen.beam,
             stats.sentences, stats.seconds, stats.sentences_per_s, stats.target_tokens_per_s, len(run_seconds),
             " ".join(f"{t:.2f}" for t in run_seconds))
    return {
        **score(hyps, refs),
        "hypotheses": str(hyp_path),
        "settings": {"beam": gen.beam, "lenpen": gen.lenpen, "max_len_a": gen.max_len_a, "max_len_b": gen.max_len_b},
        "speed": {**stats.as_dict(), "max_tokens": batch.max_tokens, "batch_size": batch.batch_size,
                  "runs": len(run_seconds), "run_seconds": run_seconds},
    }


def evaluate_ct2(args: argparse.Namespace, refs: list[str], hyp_paths: dict[str, Path]) -> dict[str, Any]:
    """The evaluation with the CTranslate2 backend: same measurements, same JSON layout as fairseq's."""
    if args.split:
        raise CorpusError("--backend ctranslate2 reads text, not a binarised split: give --src-pieces or --src-text")
    model = ct2.load_from_args(args, threads=args.threads)
    meta = model.meta
    spm = Path(args.spm) if args.spm else model.spm_model
    if spm is None:
        raise CorpusError(f"{model.path}: no {ct2.SPM} in the model directory: pass --spm")
    src, tgt = meta.get("source_lang"), meta.get("target_lang")
    if src is None or tgt is None:
        raise CorpusError(f"{model.path}: no {ct2.META} naming the languages (convert with pipeline.ct2)")
    codec = ct2.TextCodec(spm, src, tgt, normalize=not args.no_normalize, detokenize=not args.no_detok)
    if args.src_pieces:
        lines, source_desc = read_lines(args.src_pieces), str(args.src_pieces)
    else:
        lines, source_desc = [codec.encode(line) for line in read_lines(args.src_text)], str(args.src_text)
    if len(refs) != len(lines):
        raise CorpusError(f"{args.ref}: {len(refs)} reference lines but the source ({source_desc}) has {len(lines)}")
    result: dict[str, Any] = {
        "model": args.name or Path(meta.get("checkpoint", model.path)).parent.name,
        "checkpoint": meta.get("checkpoint", str(model.path)),
        "backend": "ctranslate2",
        "compute_type": model.requested_compute_type,  # as asked (runtime.compute_type: as run)
        "ct2_model": str(model.path),
        "set": args.set_name,
        "source": source_desc,
        "reference": str(args.ref),
        "src": src,
        "tgt": tgt,
        "sentences": len(refs),
        "runtime": model.runtime_info(),
    }
    batch = BatchSettings(max_tokens=args.max_tokens, batch_size=args.batch_size)
    for mode in args.modes:
        beam = args.beam if mode == "beam" else 1
        gen = GenerationSettings(beam=beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
        decoded, seconds = fastest_of(lambda gen=gen: ct2.decode(model, lines, gen, batch, warmup=True), args.speed_runs)
        result[mode] = mode_result(decoded, codec, refs, gen, batch, hyp_paths[mode], seconds)
    model_bin = model.path / "model.bin"
    result["model_size"] = {"model_bin_bytes": model_bin.stat().st_size, "weights": meta.get("quantization")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fairseq checkpoint (required with --backend fairseq)")
    parser.add_argument("--name", help="model name for the report (default: the checkpoint's directory name)")
    parser.add_argument("--set", dest="set_name", required=True, help="evaluation set name for the report")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", help="binarised split of --data: dev, test (or fairseq's valid, test)")
    source.add_argument("--src-text", type=Path, help="raw source text (normalised and spm-encoded here)")
    source.add_argument("--src-pieces", type=Path, help="spm-encoded source text (as the data stage wrote it)")
    parser.add_argument("--ref", type=Path, required=True, help="raw reference text")
    parser.add_argument("--data", help="binarised data / dictionaries (default: from the checkpoint)")
    parser.add_argument("--spm", help="SentencePiece model (default: found from the data directory)")
    parser.add_argument("--no-normalize", action="store_true", help="--src-text: skip Moses punctuation normalisation")
    parser.add_argument("--no-detok", action="store_true", help="skip Moses detokenisation of the output")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--beam-hyps", type=Path, help="beam hypotheses (plain text); default: JSON path .beam.txt")
    parser.add_argument("--greedy-hyps", type=Path, help="greedy hypotheses; default: JSON path .greedy.txt")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--max-len-a", type=float, default=1.2)
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per batch (default 6000 without --batch-size)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="decode on CPU even if CUDA is available")
    parser.add_argument("--speed-runs", type=int, default=1,
                        help="decode each mode this many times; the fastest pass is the speed (default 1)")
    parser.add_argument("--fp16", action="store_true", help="half precision (CUDA only)")
    parser.add_argument("--spec", type=Path, help="the model's spec.json: copied into the result (key spec)")
    ct2.add_backend_arguments(parser)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text(encoding="utf-8")) if args.spec else None

    started = time.time()
    hyp_paths = {
        "beam": args.beam_hyps or args.json.with_suffix(".beam.txt"),
        "greedy": args.greedy_hyps or args.json.with_suffix(".greedy.txt"),
    }
    if args.backend == "ctranslate2":
        result = evaluate_ct2(args, read_lines(args.ref), hyp_paths)
        if spec is not None:
            result["spec"] = spec
        result["seconds_total"] = time.time() - started
        write_lines(args.json, [json.dumps(result, indent=2)])
        for mode in args.modes:
            log.info("%s %s %s (ctranslate2 %s): %s | %s", result["model"], args.set_name, mode, result["compute_type"],
                     result[mode]["bleu"]["text"], result[mode]["chrf"]["text"])
        return
    if args.model is None:
        raise CorpusError("--model CHECKPOINT is required with --backend fairseq")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, data_dir=args.data, cpu=args.cpu, fp16=args.fp16)
    codec = TextCodec(find_spm(lm, args.spm), lm.source_lang, lm.target_lang,
                      normalize=not args.no_normalize, detokenize=not args.no_detok)
    if args.split:
        dataset = split_dataset(lm, FAIRSEQ_SPLIT.get(args.split, args.split))
        source_desc = f"{lm.data_dir} split {args.split}"
    elif args.src_pieces:
        dataset = lines_dataset(lm, read_lines(args.src_pieces))
        source_desc = str(args.src_pieces)
    else:
        dataset = lines_dataset(lm, [codec.encode(line) for line in read_lines(args.src_text)])
        source_desc = str(args.src_text)
    refs = read_lines(args.ref)
    if len(refs) != len(dataset):
        raise CorpusError(f"{args.ref}: {len(refs)} reference lines but the source ({source_desc}) has {len(dataset)}")

    batch = BatchSettings(max_tokens=args.max_tokens, batch_size=args.batch_size)
    result: dict[str, Any] = {
        "model": args.name or args.model.parent.name,
        "checkpoint": str(args.model),
        "set": args.set_name,
        "source": source_desc,
        "reference": str(args.ref),
        "src": lm.source_lang,
        "tgt": lm.target_lang,
        "sentences": len(refs),
        "runtime": runtime_info(lm),
    }
    for mode in args.modes:
        beam = args.beam if mode == "beam" else 1
        gen = GenerationSettings(beam=beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
        result[mode] = evaluate_mode(lm, dataset, codec, refs, gen, batch, hyp_paths[mode], args.speed_runs)
    result["model_size"] = model_size(lm.path, model=lm.model)
    if spec is not None:
        result["spec"] = spec
    result["seconds_total"] = time.time() - started
    write_lines(args.json, [json.dumps(result, indent=2)])
    for mode in args.modes:
        log.info("%s %s %s: %s | %s", result["model"], args.set_name, mode, result[mode]["bleu"]["text"],
                 result[mode]["chrf"]["text"])


if __name__ == "__main__":
    run(main)
