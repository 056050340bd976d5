"""Scale benchmark: the data and distillation stages on a synthetic corpus at several sizes, one process per stage.

    python -m pipeline.benchmarks.scale [--sizes 100000 1000000 4000000] [--workers 2] [--jobs 2]
        [--shard-size 50000] [--selection seq_inter] [--nbest 5] [--workdir DIR] [--keep] [--json OUT.json]
        [--until {normalize,clean,spm,index,distill,binarize}] [--skip-distill] [--merge-runs 3]
    python -m pipeline.benchmarks.scale --quick      # a few thousand pairs: the test suite's check

For each size, a deterministic synthetic parallel corpus (no download; see `generate`) is taken
through the pipeline's own CLIs, each stage a separate process: Moses normalisation of both sides,
cleaning, SentencePiece encoding of both sides (the model is trained once, on a bounded sample: the
first size's cleaned corpus, at most --spm-sample pairs), the shard index, per-shard post-processing
(selection, filters, statistics; --jobs shard jobs at a time) and the merge, and binarisation of the
distilled corpus (fairseq-preprocess with a fixed dictionary, as distill_binarize does). The decoding
itself is replaced by pipeline.benchmarks.nbest_standin (n-best lists derived from the reference,
labelled as the stand-in in the table): decoding speed is measured by pipeline.benchmarks.ct2_vs_fairseq.

Printed per stage and size: wall time, seconds per million pairs, CPU time (and the kernel's part of
it), and peak RSS (ru_maxrss
from wait4 of the stage process: the largest process of the stage, including its pool workers; a
stage with --workers N holds up to N+1 such processes); for shard jobs the wall time is the sum over
shards (the work a cluster spreads), the peak RSS the largest shard's. Every stage starts on a synced
file system. The merge, a few seconds mostly spent in the kernel, runs --merge-runs times (the median
in the table, every run listed), each with its inputs first dropped from the page cache, so that every
size reads them from disk. Then the ratios between sizes:
peak RSS of the largest size over the smallest, and time per million pairs of the largest over the
second largest (linear scaling: about 1), and the merge's time over the post-processing it replaces.
The big sizes need about 3 GB of disk per million pairs while a size runs (deleted after it, unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SIZES = (100_000, 1_000_000, 4_000_000)
QUICK_SIZE = 2000
SRC, TGT = "de", "en"
STANDIN = "teacher stand-in (not a pipeline stage)"
# --until: the last group of stages to run (each needs the ones before it); the distillation group is the
# stand-in, post-processing and merge, whose shard jobs cost most (post-processing: about 1.7 ms per pair)
UNTIL = ("normalize", "clean", "spm", "index", "distill", "binarize")

# ------------------------------------------------------------------------------------------------
# The synthetic corpus


def _vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ei", "au", "ä", "ü")]
    words = set()
    while len(words) < n:
        k = int(rng.integers(1, 5))
        words.add("".join(syllables[i] for i in rng.integers(0, len(syllables), k)))
    return sorted(words, key=lambda w: (len(w), w))  # frequent words short, as in real text


def generate(pairs: int, out_dir: Path, seed: int = 1, vocab: int = 50_000) -> None:
    """A parallel corpus of `pairs` lines: raw/train.de and raw/train.en, deterministic in (pairs, seed).

    Sentence lengths are log-normal (median 18 words, mean 21, a tail past 100 words as in WMT news
    and web-crawled text); words are drawn from a Zipf(1.1) vocabulary of 50,000 made-up words; the
    target maps each source word to its own target word, with 10% substituted and 0-3 words added,
    so that lengths correlate as in real translations. About 2% of the pairs repeat an earlier pair
    and 0.1% have the source copied as target (cleaning's duplicate and identical filters); 5% carry
    punctuation that Moses normalisation rewrites (« », „ “, …, doubled spaces).
    """
    rng = np.random.default_rng(seed)
    src_words = _vocabulary(vocab, rng)
    tgt_words = [w[::-1] for w in src_words]
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -1.1)
    cdf /= cdf[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    recent: list[tuple[str, str]] = []
    with (out_dir / f"train.{SRC}").open("w", encoding="utf-8") as fs, (out_dir / f"train.{TGT}").open("w", encoding="utf-8") as ft:
        done = 0
        while done < pairs:
            n = min(100_000, pairs - done)
            lengths = np.clip(np.rint(rng.lognormal(2.9, 0.55, n)), 1, 160).astype(np.int64)
            words = np.searchsorted(cdf, rng.random(int(lengths.sum())))
            subst = np.searchsorted(cdf, rng.random(int(lengths.sum())))
            substitute = rng.random(int(lengths.sum())) < 0.1
            extra = rng.integers(0, 4, n)
            kind = rng.random(n)
            ends = np.cumsum(lengths)
            for i in range(n):
                a, b = int(ends[i] - lengths[i]), int(ends[i])
                if kind[i] < 0.02 and recent:
                    src, tgt = recent[int(kind[i] * 1e6) % len(recent)]
                else:
                    ids = words[a:b]
                    src = " ".join(src_words[j] for j in ids).capitalize()
                    tgt_ids = np.where(substitute[a:b], subst[a:b], ids)
                    tgt = " ".join([tgt_words[j] for j in tgt_ids] + [tgt_words[j] for j in subst[a:a + int(extra[i])]])
                    tgt = tgt.capitalize()
                    if kind[i] < 0.07:
                        src = f"« {src} » …  „ja“."
                        tgt = f"\" {tgt} \" ...  \"yes\"."
                    else:
                        src, tgt = src + ".", tgt + "."
                    if kind[i] > 0.999:
                        tgt = src
                    if len(recent) < 1000:
                        recent.append((src, tgt))
                    elif kind[i] > 0.98:
                        recent[int(kind[i] * 1e7) % 1000] = (src, tgt)
                fs.write(src + "\n")
                ft.write(tgt + "\n")
            done += n


# ------------------------------------------------------------------------------------------------
# Measuring one stage process


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    system_s: float = 0.0  # the kernel's share of cpu_s
    walls: list[float] | None = None  # every run's wall time, where the stage was run more than once


def median_run(runs: list[Run]) -> Run:
    """The run of median wall time, with every run's wall time recorded."""
    chosen = sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]
    return Run(chosen.wall_s, chosen.cpu_s, max(r.peak_rss_mib for r in runs), chosen.system_s, [r.wall_s for r in runs])


def measure(cmd: list[str], log: Path, cold: Sequence[Path] = ()) -> Run:
    """Run cmd as a child process; wall time, CPU time and peak RSS of that very process (wait4).

    The file system is synced first, so that a stage is not charged for the write-back of the pages an
    earlier stage left dirty (the kernel's time of an I/O-bound stage depends on them). The files in
    `cold` then leave the page cache: the stage reads them from disk.
    """
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    os.sync()
    for path in cold:
        drop_from_page_cache(path)
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, usage.ru_stime)


def drop_from_page_cache(path: Path) -> None:
    """Tell the kernel the file's (clean) pages may go; nothing where the system has no posix_fadvise."""
    if hasattr(os, "posix_fadvise"):
        with path.open("rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure_many(cmds: list[list[str]], log: Path, jobs: int) -> Run:
    """Shard jobs, `jobs` at a time: summed wall and CPU times, the largest peak RSS."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(lambda c: measure(c, log), cmds))
    return Run(sum(r.wall_s for r in runs), sum(r.cpu_s for r in runs), max(r.peak_rss_mib for r in runs),
               sum(r.system_s for r in runs))


# ------------------------------------------------------------------------------------------------
# The stages


def py(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def spm_dictionary(vocab: Path, out: Path) -> None:
    """A fairseq dictionary of the SentencePiece pieces (fairseq adds <s>, <pad>, </s>, <unk> itself)."""
    pieces = [line.split("\t")[0] for line in vocab.read_text(encoding="utf-8").splitlines()]
    out.write_text("".join(f"{p} 1\n" for p in pieces if p not in ("<unk>", "<s>", "</s>", "<pad>")), encoding="utf-8")


def binarize_cmd(trainpref: Path, destdir: Path, spm_dir: Path, workers: int) -> list[str]:
    """fairseq-preprocess with a fixed dictionary, as distill_binarize runs it."""
    return py("fairseq_cli.preprocess", "--source-lang", SRC, "--target-lang", TGT, "--trainpref", trainpref,
              "--destdir", destdir, "--srcdict", spm_dir / "dict.txt", "--tgtdict", spm_dir / "dict.txt",
              "--workers", workers)


def run_size(pairs: int, root: Path, spm_dir: Path, args: argparse.Namespace, log: Path) -> dict[str, Run]:
    from pipeline.distill.postprocess import PART_FILES
    from pipeline.distill.shards import shard_filename

    d = root / f"n{pairs}"
    shutil.rmtree(d, ignore_errors=True)
    measure(py("pipeline.benchmarks.scale", "--generate", pairs, d / "raw", "--seed", args.seed), log)
    runs: dict[str, Run] = {}
    for lang in (SRC, TGT):
        runs[f"normalize ({lang})"] = measure(py("pipeline.normalize", "--lang", lang, "--workers", args.workers,
                                                 d / f"raw/train.{lang}", d / f"norm/train.{lang}"), log)
    last = UNTIL.index(args.until)

    def done() -> dict[str, Run]:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        return runs

    if last == UNTIL.index("normalize"):
        return done()
    runs["clean"] = measure(py("pipeline.clean", "--src-in", d / f"norm/train.{SRC}", "--tgt-in", d / f"norm/train.{TGT}",
                               "--src-out", d / f"clean/train.{SRC}", "--tgt-out", d / f"clean/train.{TGT}",
                               "--ids-out", d / "clean/train.ids", "--stats", d / "clean/stats.json"), log)
    if last == UNTIL.index("clean"):
        return done()
    model = spm_dir / "spm.model"
    if not model.exists():  # once, on a bounded sample: the first size's cleaned corpus, at most --spm-sample pairs
        sample = spm_dir / "sample.txt"
        spm_dir.mkdir(parents=True, exist_ok=True)
        with sample.open("w", encoding="utf-8") as out:
            for lang in (SRC, TGT):
                with (d / f"clean/train.{lang}").open(encoding="utf-8") as f:
                    for i, line in enumerate(f):
                        if i >= args.spm_sample:
                            break
                        out.write(line)
        runs["spm train (once, bounded sample)"] = measure(py(
            "pipeline.spm", "train", "--model-prefix", spm_dir / "spm", "--vocab-size", args.vocab_size,
            "--threads", args.workers, sample), log)
        spm_dictionary(spm_dir / "spm.vocab", spm_dir / "dict.txt")
    for lang in (SRC, TGT):
        runs[f"spm encode ({lang})"] = measure(py("pipeline.spm", "encode", "--model", model, "--workers", args.workers,
                                                  d / f"clean/train.{lang}", d / f"spm/train.{lang}"), log)
    if last == UNTIL.index("spm"):
        return done()
    index = d / "distill/index.json"
    runs["shard index"] = measure(py(
        "pipeline.distill.shard_index", "--shard-size", args.shard_size, "--ids", d / "clean/train.ids",
        "--src-spm", d / f"spm/train.{SRC}", "--ref-spm", d / f"spm/train.{TGT}", "--src-text", d / f"clean/train.{SRC}",
        "--ref-text", d / f"clean/train.{TGT}", "--out", index), log)
    if last == UNTIL.index("index"):
        return done()
    if args.skip_distill:  # binarise the cleaned corpus: the same sentences, without hours of post-processing
        runs["binarize (fairseq-preprocess, cleaned corpus)"] = measure(binarize_cmd(d / "spm/train", d / "bin", spm_dir,
                                                                                   args.workers), log)
        return done()
    shards = json.loads(index.read_text())["shards"]
    shard_files = [d / "distill/shards" / shard_filename(k, shards) for k in range(shards)]
    parts = [d / "distill/post" / f.name.removesuffix(".jsonl") for f in shard_files]
    runs[STANDIN] = measure_many([py(
        "pipeline.benchmarks.nbest_standin", "--index", index, "--shard-id", k, "--num-shards", shards, "--out", f,
        "--nbest", args.nbest, "--seed", args.seed) for k, f in enumerate(shard_files)], log, args.jobs)
    runs["post-process (sum of shard jobs)"] = measure_many([py(
        "pipeline.distill.postprocess", "--shard", f, "--shard-id", k, "--num-shards", shards, "--index", index,
        "--spm-model", model, "--out-dir", p, "--selection", args.selection)
        for k, (f, p) in enumerate(zip(shard_files, parts, strict=True))], log, args.jobs)
    out = d / "distill/merged"
    merge_cmd = py(
        "pipeline.distill.merge", "--index", index, "--num-shards", shards, "--parts", *parts,
        "--out-src", out / f"train.{SRC}", "--out-tgt", out / f"train.{TGT}", "--out-ids", out / "train.ids",
        "--text-src", out / f"train.{SRC}.txt", "--text-tgt", out / f"train.{TGT}.txt", "--stats", out / "stats.json",
        "--fail-fallback-share", 1.0)
    # A few seconds, mostly the kernel's, which depend on where the parts are: some still in the page cache,
    # some paged out, a share that grows with the time post-processing took, so with the size (this VM pages
    # out what was not touched for a minute). Every run starts with the parts out of the cache, as a cluster
    # job finds the parts other nodes wrote; the median of a few runs (each replaces the one before's outputs).
    part_files = [p / name for p in parts for name in PART_FILES]
    runs["merge"] = median_run([measure(merge_cmd, log, cold=part_files) for _ in range(args.merge_runs)])
    if last == UNTIL.index("distill"):
        return done()
    runs["binarize (fairseq-preprocess)"] = measure(binarize_cmd(out / "train", d / "distill/bin", spm_dir, args.workers), log)
    return done()


# ------------------------------------------------------------------------------------------------
# The report


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 100_000 else f"{n:,}"


def tables(results: dict[int, dict[str, Run]]) -> str:
    sizes = sorted(results)
    stages = list(dict.fromkeys(s for size in sizes for s in results[size]))
    lines = ["| stage | pairs | wall (s) | s per 1M pairs | CPU (s) | of it kernel (s) | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for stage in stages:
        for size in sizes:
            r = results[size].get(stage)
            if r is not None:
                lines.append(f"| {stage} | {_fmt_size(size)} | {r.wall_s:.2f} | {r.wall_s / size * 1e6:.1f} | "
                             f"{r.cpu_s:.2f} | {r.system_s:.2f} | {r.peak_rss_mib:.0f} |")
    if len(sizes) > 1:
        big, second, small = sizes[-1], sizes[-2], sizes[0]
        lines += ["", f"| stage | peak RSS {_fmt_size(big)} / {_fmt_size(small)} | s per 1M pairs {_fmt_size(big)} / "
                      f"{_fmt_size(second)} |", "|---|---|---|"]
        for stage in stages:
            a, b, c = results[big].get(stage), results[second].get(stage), results[small].get(stage)
            if a and b and c:
                lines.append(f"| {stage} | {a.peak_rss_mib / c.peak_rss_mib:.2f} | "
                             f"{(a.wall_s / big) / (b.wall_s / second):.2f} |")
    lines.append("")
    for size in sizes:
        merge, post = results[size].get("merge"), results[size].get("post-process (sum of shard jobs)")
        if merge and post:
            lines.append(f"merge / post-processing at {_fmt_size(size)} pairs: {merge.wall_s / post.wall_s:.1%} of the wall time")
        if merge and merge.walls and len(merge.walls) > 1:
            lines.append(f"merge at {_fmt_size(size)} pairs, every run's wall time (s): "
                         f"{', '.join(f'{w:.2f}' for w in merge.walls)} (the table: the median)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE:,} pairs only (the test suite's check)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes of a pooled stage")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="shard jobs at a time")
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--selection", choices=("top1", "seq_inter"), default="seq_inter")
    parser.add_argument("--nbest", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--spm-sample", type=int, default=200_000, help="pairs of the first size to train SentencePiece on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-distill", action="store_true",
                        help="after the shard index, binarise the cleaned corpus (same sentences) instead of running "
                             "the distillation group: binarisation measured at sizes where post-processing takes hours")
    parser.add_argument("--until", choices=UNTIL, default=UNTIL[-1],
                        help="stop each size after this group of stages (spm: SentencePiece; index: the shard index; "
                             "distill: stand-in, post-processing, merge)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed")
    parser.add_argument("--keep", action="store_true", help="keep each size's files")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--merge-runs", type=int, default=3, help="runs of the merge, the median reported")
    parser.add_argument("--generate", nargs=2, metavar=("PAIRS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(int(args.generate[0]), Path(args.generate[1]), args.seed)
        return
    if args.skip_distill and args.until != "binarize":
        parser.error("--skip-distill binarises the cleaned corpus: it needs --until binarize (the default)")
    if args.quick:
        args.sizes, args.shard_size, args.nbest, args.vocab_size = [QUICK_SIZE], 700, 3, 1000
    root = args.workdir or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "stages.log"
    results: dict[int, dict[str, Run]] = {}
    try:
        for pairs in sorted(args.sizes):
            print(f"# {pairs:,} pairs ...", file=sys.stderr, flush=True)
            results[pairs] = run_size(pairs, root, root / "spm", args, log)
    finally:
        if args.json:
            args.json.write_text(json.dumps({str(k): {s: asdict(r) for s, r in v.items()} for k, v in results.items()},
                                            indent=1) + "\n")
    print(f"Scale benchmark: workers {args.workers}, shard jobs {args.jobs} at a time, shard size {args.shard_size:,},"
          f" selection {args.selection}, n-best {args.nbest}, {os.cpu_count()} CPUs, stages until {args.until}"
          + (", distillation skipped (the cleaned corpus binarised)" if args.skip_distill else ""))
    print(tables(results))
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"stage commands and logs: {log}")


if __name__ == "__main__":
    main()
