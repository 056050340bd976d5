"""Benchmark: CTranslate2 vs fairseq-generate decoding, same teacher, same sentences, same beam, one run.

    python -m pipeline.benchmarks.ct2_vs_fairseq --model work/models/teacher-<key>/model.pt \
        --src work/data/<dir>/spm/train.de --n 5000 --beam 5 [--threads 2] [--json results/benchmarks/ct2.json]
    python -m pipeline.benchmarks.ct2_vs_fairseq --model CKPT --src SPM_TRAIN --quick     # seconds

1. fairseq (pipeline.decoding's fairseq backend, as the distillation shards and the evaluation run it) decodes the
   first --n training sentences with the torch thread count that was fastest on the tuning
   sentences (1 or --threads: on a loaded machine one thread can beat two): the reference speed
   and hypotheses.
2. The checkpoint is converted once (float32 weights); on the first --tune-n sentences the batch
   size in padded source tokens and the split of the threads into inter_threads x intra_threads
   are tuned for each compute type, plus one run without sorting by length at the best setting.
3. Each compute type decodes the same --n sentences with its best setting: speed ratio against
   fairseq, share of best hypotheses identical to fairseq's, and (4) BLEU on the test set
   (--test-src spm pieces, --test-ref raw reference; default: test.* beside --src and ../raw) for
   fairseq and each compute type, with the loss against fairseq. "identical" counts best
   hypotheses equal to fairseq's; "uncapped" only among sentences where neither backend's
   hypothesis reached the sentence's own length cap (a capped, looping hypothesis depends on the
   batch's longest source, i.e. on the batch size, in both backends).
5. With a vocabulary shortlist (pipeline.vmap, built from the whole --src corpus and its target
   side beside it; --no-vmap to skip), each compute type is tuned again (batch size, at its best
   thread split) and decodes the same sentences: what the shortlist buys in speed and costs in
   identical hypotheses and BLEU.
6. On a CPU, int8 at its best setting decodes the same sentences again in child processes, once
   per instruction-set variant of pipeline.benchmarks.cpu_isa (the default, each cap below this
   CPU's best: no AMX, AVX2 only; on Intel also oneDNN instead of MKL; --no-isa to skip): how much
   of the ratio is this CPU's int8 instructions.
The fastest compute type is the one `auto` should pick on this device (pipeline.decoding.compute.DEFAULT_COMPUTE_TYPE).
Both backends are opened by pipeline.decoding.open_backend and decode through the same call.
The speeds exclude model loading and a warm-up batch. The machine's load average is printed: on a
shared machine the ratios, measured minutes apart, are only as steady as the load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.benchmarks import cpu_isa
from pipeline.corpus import read_lines
from pipeline.decoding import SearchOptions, add_decoding_args, open_backend
from pipeline.decoding import ct2_backend as ct2
from pipeline.decoding.compute import DEFAULT_COMPUTE_TYPE
from pipeline.decoding.convert import convert
from pipeline.errors import DataError
from pipeline.vmap import build_vmap, reachable, write_vmap

log = logging.getLogger("pipeline.benchmarks.ct2_vs_fairseq")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", type=Path, required=True, help="fairseq checkpoint (the teacher)")
    parser.add_argument("--data", type=Path, help="dictionaries (default: from the checkpoint)")
    parser.add_argument("--src", type=Path, required=True, help="spm-encoded training source (work/data/<dir>/spm/train.de)")
    parser.add_argument("--n", type=int, help="sentences decoded by every backend (default 5000; --quick 200)")
    parser.add_argument("--tune-n", type=int, help="sentences for the tuning runs (default 500; --quick 100)")
    parser.add_argument("--test-src", type=Path, help="spm-encoded test source (default: test.<lang> beside --src)")
    parser.add_argument("--test-ref", type=Path, help="raw test reference (default: ../raw/test.<tgt> of --src's directory)")
    parser.add_argument("--test-n", type=int, help="test sentences (default: all; --quick 100)")
    parser.add_argument("--spm", type=Path, help="SentencePiece model (default: found from the data directory)")
    add_decoding_args(parser, nbest=False, batch=False, device=False, fp16=False, backend=False, ctranslate2=False,
                      vmap=False)
    parser.add_argument("--fairseq-max-tokens", type=int, default=6000, help="fairseq's batch (its fastest measured here)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all cores)")
    parser.add_argument("--compute-types", nargs="+", help="default: every type this device supports (--quick: float32 int8)")
    parser.add_argument("--max-tokens", type=int, nargs="+", help="CTranslate2 batch sizes tried (default 250 500 1000 2000)")
    parser.add_argument("--batch-sizes", type=int, nargs="*",
                        help="CTranslate2 batches in sentences tried as well (batch type 'examples'; default 4 8 16 32)")
    parser.add_argument("--tgt", type=Path, help="target side of --src for the shortlist (default: beside --src)")
    parser.add_argument("--no-vmap", action="store_true", help="skip the runs with a vocabulary shortlist")
    parser.add_argument("--vmap-frequent", type=int, default=50, help="shortlist: always-allowed frequent pieces")
    parser.add_argument("--vmap-per-source", type=int, default=10, help="shortlist: candidates per source piece")
    parser.add_argument("--no-isa", action="store_true", help="skip the int8 runs under capped instruction sets")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds on a tiny model)")
    args = parser.parse_args(argv)
    args.n = args.n or (200 if args.quick else 5000)
    args.tune_n = min(args.tune_n or (100 if args.quick else 500), args.n)
    args.test_n = args.test_n or (100 if args.quick else None)
    args.threads = args.threads or os.cpu_count() or 1
    args.max_tokens = args.max_tokens or ([1000, 4000] if args.quick else [250, 500, 1000, 2000])
    args.batch_sizes = args.batch_sizes if args.batch_sizes is not None else ([8] if args.quick else [4, 8, 16, 32])
    return args


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def thread_splits(threads: int) -> list[tuple[int, int]]:
    """Every inter x intra with inter * intra == threads (1 x N ... N x 1)."""
    return [(inter, threads // inter) for inter in range(1, threads + 1) if threads % inter == 0]


def batch_label(trial: dict[str, Any]) -> str:
    return f"{trial['max_tokens']} tokens" if trial.get("max_tokens") else f"{trial['batch_size']} sentences"


def tune(directory: Path, ctype: str, use_vmap: bool, splits: list[tuple[int, int]], lines: list[str],
         gen: SearchOptions, max_tokens: list[int], batch_sizes: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(best setting, every trial): each thread split x batch in tokens and in sentences, then the best unsorted."""
    trials = []
    for inter, intra in splits:
        backend = open_backend(directory, compute_type=ctype, inter_threads=inter, intra_threads=intra, use_vmap=use_vmap)
        for n_tokens, n_sentences in [(n, None) for n in max_tokens] + [(None, n) for n in batch_sizes]:
            stats = backend.decode(lines, replace(gen, max_tokens=n_tokens, batch_size=n_sentences), warmup=True).stats
            trials.append({"inter": inter, "intra": intra, "max_tokens": n_tokens, "batch_size": n_sentences,
                           "sorted": True, "sentences_per_s": stats.sentences_per_s})
        del backend
    best = max(trials, key=lambda t: t["sentences_per_s"])
    model = ct2.load(directory, compute_type=ctype, inter_threads=best["inter"], intra_threads=best["intra"],
                     use_vmap=use_vmap)
    settings = replace(gen, max_tokens=best["max_tokens"], batch_size=best["batch_size"])
    stats = ct2.decode(model, lines, settings, warmup=True, sort=False).stats  # CTranslate2 only: unsorted batches
    trials.append({**best, "sorted": False, "sentences_per_s": stats.sentences_per_s})
    return best, trials


def isa_sweep(int8: dict[str, Any], model_dir: Path, lines: list[str], ctype: str, gen: SearchOptions, fairseq_speed: float,
              fairseq_best: list[str], cpu: dict[str, Any], test_lines: list[str], test_score,
              fairseq_bleu: float) -> list[dict[str, Any]]:
    """int8 at its best setting under each instruction-set variant (child processes): speed, ratio, identical, BLEU.

    test_score: BLEU of a list of best test hypotheses (spm pieces).
    """
    best, rows = int8["best"], []
    for variant in cpu_isa.variants(cpu):
        r = cpu_isa.run_variant(variant, model_dir, lines, ctype, best["inter"], best["intra"], best["max_tokens"],
                                best["batch_size"], asdict(gen), test_lines)
        r["ratio"] = r["speed"]["sentences_per_s"] / fairseq_speed
        r["identical_to_fairseq"] = sum(a == b for a, b in zip(fairseq_best, r.pop("best"), strict=True)) / len(lines)
        r["test_bleu"] = test_score(r.pop("test_best"))
        r["bleu_loss"] = fairseq_bleu - r["test_bleu"]
        print(f"  int8, {r['label']}: {r['speed']['sentences_per_s']:.1f} sent/s = {r['ratio']:.2f}x fairseq; "
              f"identical {r['identical_to_fairseq']:.1%}; test BLEU {r['test_bleu']:.2f}", flush=True)
        rows.append(r)
    return rows


def bleu(hyps: list[str], refs: list[str]) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU().corpus_score(hyps, [refs]).score


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    import ctranslate2
    import torch

    from pipeline.spm import TextCodec

    torch.set_num_threads(args.threads)
    corpus = read_lines(args.src)  # the shortlist is built from all of it
    lines = corpus[: args.n]
    if len(lines) < args.n:
        raise DataError(f"{args.src}: {len(lines)} lines, fewer than --n {args.n}")
    lm = open_backend(args.model, backend="fairseq", data_dir=args.data, cpu=True)
    lang = args.src.name.rsplit(".", 1)[-1]
    test_src = args.test_src or args.src.with_name(f"test.{lang}")
    tgt_path = args.tgt or args.src.with_name(f"train.{lm.target_lang}")
    if not args.no_vmap and not tgt_path.is_file():
        raise DataError(f"{tgt_path}: no target side for the vocabulary shortlist (pass --tgt, or --no-vmap)")
    test_ref = args.test_ref or args.src.parent.parent / "raw" / f"test.{lm.target_lang}"
    test_lines, refs = read_lines(test_src)[: args.test_n], read_lines(test_ref)[: args.test_n]
    if len(test_lines) != len(refs):
        raise DataError(f"{test_ref}: {len(refs)} lines but {test_src} has {len(test_lines)}")
    codec = TextCodec(lm.spm_model(args.spm), lm.source_lang, lm.target_lang, normalize=False)
    gen = SearchOptions.from_args(args, max_tokens=None, batch_size=None)  # batches: below, per backend
    device = ct2.ct2_device()
    supported = ctranslate2.get_supported_compute_types(device)
    types = args.compute_types or (["float32", "int8"] if args.quick else
                                   [t for t in ("float32", "float16", "bfloat16", "int8_float16", "int8_float32", "int8", "int16")
                                    if t in supported])
    cpu = cpu_isa.cpu_description()
    report: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "device": device, "load_avg_start": load_avg(),
                              "cpu": {**cpu, "int8_gemm": cpu_isa.int8_gemm_library(cpu)}}
    print(f"{args.model}: {args.n} sentences of {args.src}, beam {args.beam}, {args.threads} threads, device {device}; "
          f"load average {report['load_avg_start']}", flush=True)
    print(f"CPU: {cpu['model']} ({cpu['vendor']}); int8 flags: {' '.join(cpu['int8_flags']) or 'none'}; "
          f"CTranslate2's int8 GEMM: {report['cpu']['int8_gemm']}", flush=True)

    # 1. fairseq, with its faster thread count
    fs_gen = replace(gen, max_tokens=args.fairseq_max_tokens)
    fs_trials = {}
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        fs_trials[threads] = lm.decode(lines[: args.tune_n], fs_gen, warmup=True).stats.sentences_per_s
    fs_threads = max(fs_trials, key=fs_trials.__getitem__)
    torch.set_num_threads(fs_threads)
    print("  fairseq tuning (torch threads: sent/s): " + ", ".join(f"{t}: {v:.1f}" for t, v in fs_trials.items()),
          flush=True)
    fs = lm.decode(lines, fs_gen, warmup=True)
    fs_best = [n[0].tokens for n in fs.hypotheses]
    fs_test = lm.decode(test_lines, fs_gen, warmup=True)
    fs_bleu = bleu([codec.decode(n[0].tokens) for n in fs_test.hypotheses], refs)
    report["fairseq"] = {"speed": fs.stats.as_dict(), "test_bleu": fs_bleu, "max_tokens": args.fairseq_max_tokens,
                         "threads": fs_threads, "trials": fs_trials}
    src_len = [len(line.split()) + 1 for line in lines]
    cap = [int(args.max_len_a * n + args.max_len_b) for n in src_len]  # a sentence's own cap (its batch's is >=)
    fs_capped = [n[0].length >= c for n, c in zip(fs.hypotheses, cap, strict=True)]
    print(f"fairseq: {fs.stats.sentences_per_s:.1f} sent/s ({fs.stats.seconds:.1f} s), test BLEU {fs_bleu:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ct2_bench_") as tmp:
        began = time.perf_counter()
        model_dir = convert(lm.path, Path(tmp) / "model", data_dir=lm.data_dir, spm=args.spm)
        report["conversion_seconds"] = time.perf_counter() - began
        vmap_dir = None
        if not args.no_vmap:
            always, mapping = build_vmap(corpus, read_lines(tgt_path), args.vmap_frequent,
                                         args.vmap_per_source)
            write_vmap(Path(tmp) / "vmap.txt", always, mapping)
            vmap_dir = convert(lm.path, Path(tmp) / "model_vmap", data_dir=lm.data_dir, spm=args.spm,
                               vmap=Path(tmp) / "vmap.txt")
            report["vmap"] = {"source": str(args.src), "target": str(tgt_path), "frequent": args.vmap_frequent,
                              "per_source": args.vmap_per_source, "source_pieces": len(mapping),
                              "reachable_target_pieces": len(reachable(always, mapping))}
        tune_lines = lines[: args.tune_n]
        results: dict[str, Any] = {}
        runs_as: dict[str, str] = {}
        for ctype in types:
            actual = runs_as[ctype] = open_backend(model_dir, compute_type=ctype, inter_threads=1,
                                                   intra_threads=1).runtime_info()["compute_type"]
            if actual != ctype and actual in types:  # e.g. int8 runs as int8_float32 on a CPU
                print(f"  {ctype}: runs as {actual} on {device}: measured under that name", flush=True)
                continue
            # 2. tuning on the first tune_n sentences; 3. the full run with the best setting; 4. test BLEU;
            # 5. the same with the shortlist, its batch size tuned again (smaller batches map to fewer pieces)
            runs = [(ctype, model_dir, False)] + ([(f"{ctype} + vmap", vmap_dir, True)] if vmap_dir else [])
            splits = thread_splits(args.threads)
            for name, directory, use_vmap in runs:
                best, trials = tune(directory, ctype, use_vmap, splits, tune_lines, gen, args.max_tokens, args.batch_sizes)
                splits = [(best["inter"], best["intra"])]
                tried = ", ".join(f"{t['inter']}x{t['intra']}/{batch_label(t)}{'' if t['sorted'] else '/unsorted'}: "
                                  f"{t['sentences_per_s']:.0f}" for t in trials)
                print(f"  {name} tuning ({args.tune_n} sentences, inter x intra / batch: sent/s): {tried}", flush=True)
                backend = open_backend(directory, compute_type=ctype, inter_threads=best["inter"],
                                       intra_threads=best["intra"], use_vmap=use_vmap)
                best_gen = replace(gen, max_tokens=best["max_tokens"], batch_size=best["batch_size"])
                full = backend.decode(lines, best_gen, warmup=True)
                same = [a == n[0].tokens for a, n in zip(fs_best, full.hypotheses, strict=True)]
                identical = sum(same) / len(lines)
                free = [i for i, n in enumerate(full.hypotheses) if not fs_capped[i] and n[0].length < cap[i]]
                identical_uncapped = sum(same[i] for i in free) / len(free) if free else float("nan")
                test = backend.decode(test_lines, best_gen, warmup=True)
                test_bleu = bleu([codec.decode(n[0].tokens) for n in test.hypotheses], refs)
                r = results[name] = {
                    "best": best, "trials": trials, "speed": full.stats.as_dict(), "vmap": use_vmap,
                    "ratio": full.stats.sentences_per_s / fs.stats.sentences_per_s,
                    "identical_to_fairseq": identical, "identical_uncapped": identical_uncapped, "uncapped": len(free),
                    "test_bleu": test_bleu, "bleu_loss": fs_bleu - test_bleu,
                }
                print(f"  {name}: {full.stats.sentences_per_s:.1f} sent/s = {r['ratio']:.2f}x fairseq; identical "
                      f"{identical:.1%} ({identical_uncapped:.1%} of {len(free)} uncapped); test BLEU {test_bleu:.2f} "
                      f"(loss {r['bleu_loss']:+.2f})", flush=True)
                del backend
        int8 = next((t for t in (runs_as.get("int8"), "int8") if t in results), None)  # measured under either name
        if device == "cpu" and not args.no_isa and int8:
            report["isa"] = isa_sweep(results[int8], model_dir, lines, int8, gen, fs.stats.sentences_per_s, fs_best,
                                      cpu, test_lines, lambda best: bleu([codec.decode(t) for t in best], refs), fs_bleu)
    report["ctranslate2"] = results
    report["load_avg_end"] = load_avg()

    print()
    print(f"Same teacher, same {args.n} sentences, beam {args.beam}, {args.threads} threads on {device}; "
          f"test BLEU on {len(test_lines)} sentences; load average {report['load_avg_start']} -> {report['load_avg_end']}")
    print(f"fairseq hypotheses at their length cap: {sum(fs_capped)} of {len(lines)}")
    print("| decoder | best setting | sent/s | ratio vs fairseq | identical | identical, uncapped | test BLEU | loss |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| fairseq | torch {fs_threads} thread(s), {args.fairseq_max_tokens} tokens | {fs.stats.sentences_per_s:.1f} "
          f"| 1.00x | 100% | 100% | {fs_bleu:.2f} | - |")
    for ctype, r in results.items():
        b = r["best"]
        print(f"| ct2 {ctype} | {b['inter']}x{b['intra']} threads, {batch_label(b)} "
              f"| {r['speed']['sentences_per_s']:.1f} | {r['ratio']:.2f}x | {r['identical_to_fairseq']:.1%} "
              f"| {r['identical_uncapped']:.1%} | {r['test_bleu']:.2f} | {r['bleu_loss']:+.2f} |")
    plain = [t for t in results if not results[t]["vmap"]]
    fastest = max(plain, key=lambda t: results[t]["speed"]["sentences_per_s"])
    current = DEFAULT_COMPUTE_TYPE[device]
    same = fastest in (current, runs_as.get(current))  # int8 is int8_float32 on a CPU
    print(f"fastest compute type on {device}: {fastest} (pipeline.decoding.compute.DEFAULT_COMPUTE_TYPE['{device}'] = {current}"
          f"{', which runs as ' + runs_as[current] if runs_as.get(current, current) != current else ''}"
          f"{'' if same else ': update it'}); conversion {report['conversion_seconds']:.1f} s")
    report["fastest"] = fastest
    if "vmap" in report:
        v = report["vmap"]
        print(f"vmap: shortlist of {v['frequent']} frequent target pieces + up to {v['per_source']} per source piece "
              f"({v['source_pieces']} source pieces mapped, {v['reachable_target_pieces']} target pieces reachable)")
    if report.get("isa"):
        print(f"int8 by instruction set ({report['isa'][0]['compute_type']}, each in its own process, "
              "the int8 row's setting):")
        print("| int8 GEMM variant | environment | sent/s | ratio vs fairseq | identical to fairseq | test BLEU | loss |")
        print("|---|---|---|---|---|---|---|")
        for v in report["isa"]:
            env = " ".join(f"{k}={val}" for k, val in v["env"].items()) or "-"
            print(f"| {v['label']} | {env} | {v['speed']['sentences_per_s']:.1f} | {v['ratio']:.2f}x "
                  f"| {v['identical_to_fairseq']:.1%} | {v['test_bleu']:.2f} | {v['bleu_loss']:+.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
