"""Benchmark: how much faster a student decodes than its teacher, both timed in one process, passes alternating.

    python -m pipeline.benchmarks.speedup --src work/data/<dir>/spm/test.de \
        --pair work/models/teacher-<key>/model.pt work/models/student_seq_word_kd_a0.5_t1-<key>/model.pt \
        --pair work/ct2/teacher-<key> work/ct2/student_seq_word_kd_a0.5_t1-<key> \
        [--rounds 5] [--beam 5] [--threads 2] [--names teacher student_seq_word_kd_a0.5_t1 ...] [--set test]
        [--json speedup.json]

The evaluation times every model in its own job, minutes apart, and the report divides their speeds; on a shared
machine the speed of one and the same model moves between jobs by more than the difference that matters
(docs/results.md, 2026-12-04: a student decoding the test set at 290 and at 220 sentences/s in two runs). Here
each pair (a teacher and a student, opened with the same backend: fairseq checkpoints or CTranslate2
directories, told apart by what they are) is loaded once, and both decode the same spm-encoded sentences with
the same search and batch settings in alternating passes, teacher-student in even rounds and student-teacher in
odd ones, so that a drift of the machine's speed within the run falls on both. Each pass decodes a warm-up batch
before the clock starts (as the evaluation does). Reported per pair: each model's speed (median over rounds)
and the speed-up of every round (the teacher's seconds over the student's in that round) with its median,
minimum and maximum. The machine's load average is printed before and after: other work on the machine shows
there. The workflow runs it once per student and backend (rule speedup_vs_teacher, evaluate.speedup_rounds) for
the report's side-by-side speed-up; --names and --set label the results there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any

from pipeline.cli import run
from pipeline.corpus import read_lines
from pipeline.decoding import Backend, SearchOptions, add_decoding_args, open_backend
from pipeline.errors import ConfigError, DataError

log = logging.getLogger("pipeline.benchmarks.speedup")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("TEACHER", "STUDENT"),
                        help="a teacher and its student, both fairseq checkpoints or both CTranslate2 directories "
                        "(repeat the flag for more pairs, e.g. one per backend)")
    parser.add_argument("--src", type=Path, required=True, help="spm-encoded source sentences (the data stage's spm/test.de)")
    parser.add_argument("--n", type=int, default=0, help="the first N sentences only (default 0: all)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes of each model per pair (default 5)")
    parser.add_argument("--data", help="fairseq: binarised data / dictionaries (default: as each checkpoint records)")
    parser.add_argument("--names", nargs=2, action="append", metavar=("TEACHER", "STUDENT"),
                        help="the models' names in the results, once per --pair (default: their directories' names)")
    parser.add_argument("--set", dest="set_name", help="the evaluation set --src is, recorded in the results")
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_decoding_args(parser, nbest=False, fp16=False, backend=False)
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.pair):
        parser.error(f"--names given {len(args.names)} times for {len(args.pair)} --pair: once per pair, or never")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if args.n < 0:
        parser.error(f"--n {args.n}: must be 0 (all) or more")
    return args


def open_model(path: str, args: argparse.Namespace) -> Backend:
    return open_backend(path, data_dir=args.data, cpu=args.cpu, threads=args.threads, compute_type=args.compute_type,
                        inter_threads=args.inter_threads, intra_threads=args.intra_threads, use_vmap=args.vmap)


def time_pair(teacher: Backend, student: Backend, lines: list[str], options: SearchOptions,
              rounds: int, names: tuple[str, str] | None = None) -> dict[str, Any]:
    """Alternating timed passes of both models over the same lines: speeds and the speed-up of every round.

    names: the teacher's and the student's names in the results (default: model_name of their paths).
    """
    seconds: dict[str, list[float]] = {"teacher": [], "student": []}
    models = {"teacher": teacher, "student": student}
    for i in range(rounds):
        order = ("teacher", "student") if i % 2 == 0 else ("student", "teacher")
        for role in order:
            stats = models[role].decode(lines, options, warmup=True).stats
            seconds[role].append(stats.seconds)
            log.info("round %d %s: %.2f s (%.1f sent/s)", i + 1, role, stats.seconds, stats.sentences_per_s)
    speedups = [t / s for t, s in zip(seconds["teacher"], seconds["student"], strict=True)]
    result: dict[str, Any] = {"backend": teacher.name, "device": teacher.describe_device(), "sentences": len(lines)}
    for i, (role, model) in enumerate(models.items()):
        median = statistics.median(seconds[role])
        result[role] = {"name": names[i] if names else model_name(str(model.path)), "model": str(model.path),
                        "runtime": model.runtime_info(), "seconds": seconds[role], "sentences_per_s": len(lines) / median}
    result["speedup"] = {"rounds": speedups, "median": statistics.median(speedups), "min": min(speedups),
                         "max": max(speedups)}
    return result


def model_name(path: str) -> str:
    """The model's directory name: work/models/<name>/model.pt and work/ct2/<name> alike."""
    p = Path(path)
    return p.parent.name if p.suffix == ".pt" else p.name


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| backend | teacher | student | teacher sent/s | student sent/s | speed-up (median) | min–max over rounds "
            "| rounds |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["speedup"]
        rows.append(f"| {r['backend']} | {r['teacher']['name']} | {r['student']['name']} "
                    f"| {r['teacher']['sentences_per_s']:.1f} | {r['student']['sentences_per_s']:.1f} "
                    f"| {s['median']:.2f}× | {s['min']:.2f}–{s['max']:.2f}× | {len(s['rounds'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lines = read_lines(args.src)
    if args.n:
        lines = lines[:args.n]
    if not lines:
        raise DataError(f"--src {args.src}: no sentences to decode")
    options = SearchOptions.from_args(args)
    load_before = os.getloadavg()
    results = []
    for i, (teacher_path, student_path) in enumerate(args.pair):
        teacher, student = open_model(teacher_path, args), open_model(student_path, args)
        if teacher.name != student.name:
            raise ConfigError(f"--pair {teacher_path} {student_path}: a {teacher.name} teacher and a {student.name} "
                              "student; a speed-up is measured under one backend (pass one pair per backend)")
        names = tuple(args.names[i]) if args.names else None
        results.append(time_pair(teacher, student, lines, options, args.rounds, names))
        del teacher, student
    load_after = os.getloadavg()
    report = {"set": args.set_name, "src": str(args.src), "search": options.search(), "batch": {"max_tokens": args.max_tokens,
              "batch_size": args.batch_size}, "load_average": {"before": load_before, "after": load_after},
              "pairs": results}
    print(table(results))
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run(main)
