"""pipeline.report on evaluation results as pipeline.evaluate writes them, with and without CTranslate2 rows."""

from __future__ import annotations

import csv
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def evaluation(model: str, bleu: float, beam_speed: float, ct2_type: str | None = None, runs_as: str | None = None) -> dict:
    def mode(score: float, speed: float) -> dict:
        return {"bleu": {"score": score, "signature": SIG}, "chrf": {"score": score + 20},
                "speed": {"sentences_per_s": speed}}

    result = {"model": model, "set": "test", "beam": mode(bleu, beam_speed), "greedy": mode(bleu - 2, beam_speed * 3)}
    variant = "teacher" if model == "teacher" else model.removeprefix("student_")
    result["spec"] = {"name": model, "variant": variant, "alpha": None, "temperature": None}
    if ct2_type:
        result.update(backend="ctranslate2", compute_type=ct2_type, runtime={"compute_type": runs_as or ct2_type},
                      model_size={"model_bin_bytes": 2_000_000})
    else:
        result["model_size"] = {"parameters": 1000, "stripped_checkpoint_bytes": 4_000_000}
    return result


def write(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def report(tmp_path: Path, *extra: str, more: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    evals = [write(tmp_path / "eval/teacher/test.json", evaluation("teacher", 32.0, 100.0)),
             write(tmp_path / "eval/student_baseline/test.json", evaluation("student_baseline", 27.0, 150.0)), *more]
    cmd = [sys.executable, "-m", "pipeline.report", "--evals", *map(str, evals), "--csv", str(tmp_path / "summary.csv"),
           "--md", str(tmp_path / "summary.md"), "--plots", str(tmp_path / "plots"), *extra]
    return subprocess.run(cmd, text=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


def test_ct2_rows_compare_with_the_same_model_and_the_fairseq_teacher(tmp_path: Path):
    ct2 = [write(tmp_path / "eval/teacher/test.ct2-int8.json", evaluation("teacher", 31.8, 300.0, "int8", "int8_float32")),
           write(tmp_path / "eval/student_baseline/test.ct2-int8.json",
                 evaluation("student_baseline", 27.0, 600.0, "int8"))]
    proc = report(tmp_path, "--ct2-evals", *map(str, ct2), "--ct2-csv", str(tmp_path / "summary_ct2.csv"))
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "summary_ct2.csv").open())}
    assert float(rows["teacher"]["speedup_vs_fairseq"]) == 3.0
    assert abs(float(rows["teacher"]["delta_bleu_vs_fairseq"]) + 0.2) < 1e-9
    assert float(rows["student_baseline"]["speedup_vs_fairseq"]) == 4.0
    assert float(rows["student_baseline"]["speedup_vs_fairseq_teacher"]) == 6.0
    md = (tmp_path / "summary.md").read_text()
    assert "| teacher | int8 (runs as int8_float32) | 31.80 |" in md
    assert "| student_baseline | int8 | 27.00 |" in md and "| 4.00× | 6.00× |" in md
    main = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["model"] for r in main] == ["teacher", "student_baseline"]  # one row per model, fairseq figures
    assert float(main[1]["speedup_vs_teacher"]) == 1.5
    png = (tmp_path / "plots/bleu_vs_speed.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_ct2_no_second_table_and_a_wrong_file_is_named(tmp_path: Path):
    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CTranslate2" not in (tmp_path / "summary.md").read_text()
    fairseq_json = tmp_path / "eval/teacher/test.json"
    proc = report(tmp_path, "--ct2-evals", str(fairseq_json))
    assert proc.returncode != 0 and f"{fairseq_json}: not a CTranslate2 evaluation result" in proc.stderr


def test_variant_alpha_and_temperature_come_from_the_spec_not_the_name(tmp_path: Path):
    """A model named nothing like student_<variant>_a<alpha>_t<T>: the summary still has its settings."""
    from pipeline.models import ModelSpec, model_record

    spec = ModelSpec("kd_small", "tiny", "distilled", "word_kd", "seq_word_kd", 0.3, 2.0, {"seed": 7})
    record = model_record(spec, src="de", tgt="en", spm="work/data/spm/spm.model", train_data="work/distill/bin")
    assert record == {"name": "kd_small", "variant": "seq_word_kd", "preset": "tiny", "alpha": 0.3, "temperature": 2.0,
                      "seed": 7, "teacher": "teacher", "targets": "distilled", "criterion": "word_kd",
                      "train_data": "work/distill/bin", "spm": "work/data/spm/spm.model", "src": "de", "tgt": "en"}
    kd = evaluation("kd_small", 29.0, 200.0)
    kd["spec"] = json.loads(json.dumps(record))  # as pipeline.evaluate --spec copies the file
    proc = report(tmp_path, more=(write(tmp_path / "eval/kd_small/test.json", kd),))
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert (rows["kd_small"]["variant"], rows["kd_small"]["alpha"], rows["kd_small"]["temperature"]) == ("seq_word_kd", "0.3", "2.0")
    assert float(rows["kd_small"]["delta_bleu_vs_baseline"]) == 2.0  # against the row of variant baseline
    assert rows["teacher"]["variant"] == "teacher" and rows["teacher"]["alpha"] == ""

    del kd["spec"]
    bare = write(tmp_path / "eval/kd_small/test.json", kd)
    proc = report(tmp_path, more=(bare,))
    assert proc.returncode == 2 and f"{bare}: no model spec" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------
# Choices on dev, results on test; paired bootstrap; seeds. Synthetic evaluations whose figures are
# sacreBLEU's own on hypothesis files written beside them (references with words replaced at a rate).

WORDS = ("a man woman dog child runs walks sits in on the park street water with red blue green ball small big "
         "old young house car tree near").split()


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(count)]


def noisy(refs: list[str], rate: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(word if rng.random() >= rate else rng.choice(WORDS) for word in line.split()) for line in refs]


def scored_evaluation(root: Path, model: str, evalset: str, spec: dict, rate: float, seed: int) -> Path:
    """results/eval/<model>/<set>.json and .beam.txt as pipeline.evaluate writes them (figures from the file)."""
    from sacrebleu.metrics import BLEU, CHRF

    ref = root / f"raw/{evalset}.en"
    refs = ref.read_text().splitlines()
    hyps = noisy(refs, rate, seed)
    beam = root / f"eval/{model}/{evalset}.beam.txt"
    beam.parent.mkdir(parents=True, exist_ok=True)
    beam.write_text("\n".join(hyps) + "\n")
    metric = BLEU()
    bleu, chrf = metric.corpus_score(hyps, [refs]), CHRF().corpus_score(hyps, [refs])
    result = evaluation(model, bleu.score, 100.0 if model == "teacher" else 250.0)
    result.update(set=evalset, reference=str(ref), spec={"name": model, **spec})
    result["beam"]["bleu"]["signature"] = str(metric.get_signature())
    result["beam"]["chrf"]["score"] = chrf.score
    result["beam"]["hypotheses"] = str(beam)
    return write(root / f"eval/{model}/{evalset}.json", result)


# model: (variant, alpha, seed, replacement rate on dev, on test). On dev the word-KD student with
# alpha 0.3 and seed 2 is best; on test the one with alpha 0.7 and seed 1 is: a choice made on test
# would name another model.
MODELS = {
    "teacher": ("teacher", None, 1, 0.05, 0.05),
    "student_baseline_s1": ("baseline", None, 1, 0.32, 0.26),
    "student_baseline_s2": ("baseline", None, 2, 0.24, 0.36),
    "student_seq_word_kd_a0.3_t1_s1": ("seq_word_kd", 0.3, 1, 0.22, 0.25),
    "student_seq_word_kd_a0.3_t1_s2": ("seq_word_kd", 0.3, 2, 0.10, 0.24),
    "student_seq_word_kd_a0.7_t1_s1": ("seq_word_kd", 0.7, 1, 0.20, 0.08),
    "student_seq_word_kd_a0.7_t1_s2": ("seq_word_kd", 0.7, 2, 0.24, 0.20),
}


def synthetic_run(root: Path, sets: tuple[str, ...] = ("dev", "test")) -> list[Path]:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    for number, evalset in enumerate(("dev", "test")):
        (root / f"raw/{evalset}.en").write_text("\n".join(sentences(120, number)) + "\n")
    evals = []
    for number, (model, (variant, alpha, seed, dev_rate, test_rate)) in enumerate(MODELS.items()):
        spec = {"variant": variant, "alpha": alpha, "temperature": None if alpha is None else 1.0, "seed": seed}
        for evalset, rate in (("dev", dev_rate), ("test", test_rate)):
            if evalset in sets:
                evals.append(scored_evaluation(root, model, evalset, spec, rate, 100 + number))
    return evals


def run_report(root: Path, evals: list[Path], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.report", "--evals", *map(str, evals), "--set", "test",
           "--csv", str(root / "summary.csv"), "--best-csv", str(root / "summary_best.csv"), "--md", str(root / "summary.md"),
           "--plots", str(root / "plots"), *extra]
    return subprocess.run(cmd, text=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def sacrebleu_paired_bs(ref: str, baseline: str, system: str) -> dict:
    """The sacreBLEU command line's paired bootstrap (its defaults: 1000 resamples, seed 12345) on two files."""
    env = {k: v for k, v in os.environ.items() if k != "SACREBLEU_SEED"}
    proc = subprocess.run([str(Path(sys.executable).parent / "sacrebleu"), ref, "-i", baseline, system, "--paired-bs",
                           "--format", "json"], text=True, capture_output=True, env=env, timeout=300, check=True)
    out = json.loads(proc.stdout)
    assert out[0]["system"] == f"Baseline: {baseline}" and out[1]["system"] == system
    return {"baseline": out[0]["BLEU"], "system": out[1]["BLEU"]}


def test_choices_on_dev_results_on_test_with_seeds_and_paired_bootstrap(tmp_path: Path):
    proc = run_report(tmp_path, synthetic_run(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = {(r["set"], r["model"]): r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert len(rows) == 2 * len(MODELS)  # every model on both sets
    bleu = {key: float(r["bleu"]) for key, r in rows.items()}

    # the best of each variant by dev BLEU, reported with its test BLEU; on test another one leads
    kd = [m for m in MODELS if "seq_word_kd" in m]
    assert max(kd, key=lambda m: bleu["dev", m]) == "student_seq_word_kd_a0.3_t1_s2"
    assert max(kd, key=lambda m: bleu["test", m]) == "student_seq_word_kd_a0.7_t1_s1"
    best = {r["variant"]: r for r in csv.DictReader((tmp_path / "summary_best.csv").open())}
    assert set(best) == {"baseline", "seq_word_kd"}
    chosen = best["seq_word_kd"]
    assert (chosen["model"], chosen["alpha"], chosen["temperature"], chosen["seed"]) == \
        ("student_seq_word_kd_a0.3_t1_s2", "0.3", "1.0", "2")
    assert (chosen["chosen_on"], chosen["set"]) == ("dev", "test")
    assert float(chosen["chosen_on_bleu"]) == bleu["dev", chosen["model"]]
    assert float(chosen["bleu"]) == bleu["test", chosen["model"]] < bleu["test", "student_seq_word_kd_a0.7_t1_s1"]
    assert best["baseline"]["model"] == "student_baseline_s2"  # dev: s2 better; test: s1 better
    assert bleu["dev", "student_baseline_s2"] > bleu["dev", "student_baseline_s1"]
    assert bleu["test", "student_baseline_s2"] < bleu["test", "student_baseline_s1"]
    assert {m for (s, m), r in rows.items() if r["chosen_on"] == "dev"} == {"student_seq_word_kd_a0.3_t1_s2",
                                                                           "student_baseline_s2"}

    # the comparisons are against the baseline chosen on dev, on every set
    for (evalset, model), r in rows.items():
        assert r["baseline_model"] == "student_baseline_s2"
        assert float(r["delta_bleu_vs_baseline"]) == pytest.approx(bleu[evalset, model] - bleu[evalset, "student_baseline_s2"])
        assert (r["p_vs_baseline"] == "") == (model == "student_baseline_s2")
        assert (r["p_vs_teacher"] == "") == (model == "teacher")
        assert float(r["bleu_ci95"]) > 0 and (r["bootstrap_samples"], r["bootstrap_seed"]) == ("1000", "12345")

    # paired bootstrap figures equal sacreBLEU's command line on the same files
    root = tmp_path
    for evalset in ("dev", "test"):
        ref = str(root / f"raw/{evalset}.en")
        for comparator, system in (("student_baseline_s2", "student_seq_word_kd_a0.7_t1_s1"),
                                   ("teacher", "student_seq_word_kd_a0.3_t1_s2"), ("teacher", "student_baseline_s1")):
            hyps = [str(root / f"eval/{m}/{evalset}.beam.txt") for m in (comparator, system)]
            cli = sacrebleu_paired_bs(ref, *hyps)
            ours = rows[evalset, system]
            key = "p_vs_baseline" if comparator.startswith("student_baseline") else "p_vs_teacher"
            assert float(ours[key]) == cli["system"]["p_value"]
            assert float(ours["bleu_bootstrap_mean"]) == cli["system"]["mean"]
            assert float(ours["bleu_ci95"]) == cli["system"]["ci"]
            assert float(ours["bleu"]) == pytest.approx(cli["system"]["score"], abs=1e-9)
            assert float(rows[evalset, comparator]["bleu_ci95"]) == cli["baseline"]["ci"]
    assert any(float(r["p_vs_baseline"] or 1) < 0.05 for r in rows.values())  # the figures are not all alike
    assert any(float(r["p_vs_baseline"] or 0) > 0.05 for r in rows.values())

    # mean and sample sd over the two seeds of each (variant, alpha, T)
    for evalset in ("dev", "test"):
        for stem in ("student_seq_word_kd_a0.3_t1", "student_seq_word_kd_a0.7_t1", "student_baseline"):
            values = [bleu[evalset, f"{stem}_s{seed}"] for seed in (1, 2)]
            for seed in (1, 2):
                r = rows[evalset, f"{stem}_s{seed}"]
                assert r["seeds"] == "2"
                assert float(r["bleu_mean_over_seeds"]) == pytest.approx(statistics.fmean(values))
                assert float(r["bleu_sd_over_seeds"]) == pytest.approx(statistics.stdev(values))
        assert rows[evalset, "teacher"]["seeds"] == "1" and rows[evalset, "teacher"]["bleu_sd_over_seeds"] == ""

    md = (tmp_path / "summary.md").read_text()
    assert "Choices on dev, results on test" in md and "1000 resamples, seed 12345" in md
    assert "## Best student per variant: chosen on dev, reported on test" in md
    assert md.index("## test (results)") < md.index("## dev (choices)")  # one table per set, the results' first
    r = rows["test", "student_seq_word_kd_a0.3_t1_s2"]
    assert (f"| seq_word_kd | student_seq_word_kd_a0.3_t1_s2 | 0.30 | 1.00 | 2 | {bleu['dev', r['model']]:.2f} | "
            f"{bleu['test', r['model']]:.2f} |") in md
    assert f"| {float(r['p_vs_baseline']):.4f} |" in md
    values = [bleu["test", f"student_seq_word_kd_a0.7_t1_s{seed}"] for seed in (1, 2)]
    assert f"| seq_word_kd | 0.70 | 1.00 | 2 | {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} |" in md
    for name in ("bleu_vs_alpha", "bleu_vs_speed"):
        assert (tmp_path / f"plots/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_dev_no_choice_is_made(tmp_path: Path):
    """Only test evaluated: the summary says that nothing is chosen rather than choosing on test."""
    proc = run_report(tmp_path, synthetic_run(tmp_path, sets=("test",)))
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "summary.md").read_text()
    assert "dev is not among the evaluated sets (test): no student is chosen" in md
    assert "## Best student per variant" not in md
    assert list(csv.DictReader((tmp_path / "summary_best.csv").open())) == []
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert all(r["chosen_on"] == "" for r in rows) and {r["set"] for r in rows} == {"test"}
    # the comparisons fall back to the baseline's first seed; p-values are still there
    assert {r["baseline_model"] for r in rows} == {"student_baseline_s1"}
    assert all(r["p_vs_teacher"] for r in rows if r["model"] != "teacher")


def test_hypotheses_that_do_not_match_their_evaluation_are_refused(tmp_path: Path):
    evals = synthetic_run(tmp_path)
    stale = tmp_path / "eval/student_baseline_s1/test.beam.txt"
    stale.write_text((tmp_path / "eval/teacher/test.beam.txt").read_text())
    proc = run_report(tmp_path, evals)
    assert proc.returncode == 2 and f"{stale}: BLEU" in proc.stderr and "not the hypotheses that evaluation scored" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fallback_share_shown_for_students_on_distilled_targets_only(tmp_path: Path):
    seq_kd = evaluation("student_seq_kd", 28.0, 150.0)
    seq_kd["spec"]["targets"] = "distilled"
    student = write(tmp_path / "eval/student_seq_kd/test.json", seq_kd)
    stats = write(tmp_path / "distill/stats.json", {"pairs_in": 10, "fallback_share": 0.4012})
    proc = report(tmp_path, "--distill-stats", str(stats), more=(student,))
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert rows["student_seq_kd"]["fallback_share"] == "0.4012"
    assert rows["teacher"]["fallback_share"] == rows["student_baseline"]["fallback_share"] == ""
    md = (tmp_path / "summary.md").read_text()
    assert "distillation fallback |" in md and "| 1.50× | 40.1% |" in md and "| 1.50× | – |" in md
    write(stats, {"pairs_in": 10})  # a stats file without the share (made before the merge recorded it)
    proc = report(tmp_path, "--distill-stats", str(stats), more=(student,))
    assert proc.returncode != 0 and f"{stats}: no fallback_share" in proc.stderr


def speedup_result(root: Path, student: str, backend: str, teacher_s: list[float], student_s: list[float],
                   teacher: str = "teacher", compute_type: str | None = None) -> Path:
    """A pipeline.benchmarks.speedup --json result of one pair (its layout; the real CLI's is tested in test_ct2)."""
    runtime = {"device": "cpu"}
    if compute_type:
        runtime.update(backend="ctranslate2", compute_type=compute_type, requested_compute_type=compute_type,
                       vocabulary_shortlist=False)
    rounds = [t / s for t, s in zip(teacher_s, student_s, strict=True)]
    pair = {"backend": backend, "device": "cpu", "sentences": 120,
            "teacher": {"name": teacher, "model": f"work/x/{teacher}", "runtime": runtime, "seconds": teacher_s,
                        "sentences_per_s": 120 / statistics.median(teacher_s)},
            "student": {"name": student, "model": f"work/x/{student}", "runtime": runtime, "seconds": student_s,
                        "sentences_per_s": 120 / statistics.median(student_s)},
            "speedup": {"rounds": rounds, "median": statistics.median(rounds), "min": min(rounds), "max": max(rounds)}}
    tag = "fairseq" if backend == "fairseq" else f"ct2-{compute_type}"
    return write(root / f"eval/{student}/test.speedup-{tag}.json",
                 {"set": "test", "src": "spm/test.de", "search": {"beam": 5}, "pairs": [pair]})


def test_side_by_side_speedups_beside_the_chosen_students_and_in_their_own_table(tmp_path: Path):
    """Each student's speed-up timed beside the teacher: the median of its rounds, per backend, in summary_speedup.csv,
    the fairseq one in summary.csv's rows of that set and beside the chosen students; the separate jobs' ratio stays."""
    evals = synthetic_run(tmp_path)
    chosen = "student_seq_word_kd_a0.3_t1_s2"
    speedups = [speedup_result(tmp_path, chosen, "fairseq", [3.0, 3.3, 3.6], [1.0, 1.2, 1.0]),
                speedup_result(tmp_path, chosen, "ctranslate2", [1.0, 1.1, 1.2], [0.25, 0.5, 0.3], compute_type="int8"),
                speedup_result(tmp_path, "student_baseline_s2", "fairseq", [3.0, 3.0, 3.0], [1.5, 1.5, 1.5])]
    out = tmp_path / "summary_speedup.csv"
    proc = run_report(tmp_path, evals, "--speedups", *map(str, speedups), "--speedup-csv", str(out))
    assert proc.returncode == 0, proc.stderr
    table = [(r["model"], r["backend"], r["compute_type"], r["rounds"], float(r["speedup_median"]), float(r["speedup_min"]),
              float(r["speedup_max"])) for r in csv.DictReader(out.open())]
    assert table == [("student_baseline_s2", "fairseq", "", "3", 2.0, 2.0, 2.0),
                     (chosen, "fairseq", "", "3", 3.0, 2.75, 3.6),
                     (chosen, "ctranslate2", "int8", "3", 4.0, 2.2, 4.0)]
    rows = {(r["set"], r["model"]): r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert float(rows["test", chosen]["speedup_side_by_side"]) == 3.0
    assert float(rows["test", chosen]["speedup_vs_teacher"]) == 2.5  # 250 / 100 sent/s: the evaluation jobs' ratio
    assert rows["dev", chosen]["speedup_side_by_side"] == "" and rows["test", "teacher"]["speedup_side_by_side"] == ""
    best = {r["variant"]: r for r in csv.DictReader((tmp_path / "summary_best.csv").open())}
    assert float(best["seq_word_kd"]["speedup_side_by_side"]) == 3.0
    md = (tmp_path / "summary.md").read_text()
    assert "| speed-up vs teacher (beam, separate jobs) | speed-up vs teacher (beam, side by side) |" in md
    assert "| 2.50× | fairseq 3.00×; CTranslate2 int8 4.00× |" in md
    assert "## Speed-up against the teacher, timed side by side" in md
    assert f"| {chosen} | teacher | CTranslate2 int8 | test | 3 | 109.1 | 400.0 | 4.00× | 2.20–4.00× |" in md

    # a student timed beside another teacher is refused, naming the file; so is a file that is no such result
    other = speedup_result(tmp_path / "other", chosen, "fairseq", [2.0], [1.0], teacher="teacher_2")
    proc = run_report(tmp_path, evals, "--speedups", str(other))
    assert proc.returncode == 2 and f"{other}: {chosen} timed beside 'teacher_2', but the report's teacher is 'teacher'" \
        in proc.stderr
    proc = run_report(tmp_path, evals, "--speedups", str(evals[0]))
    assert proc.returncode == 2 and f"{evals[0]}: not a side-by-side speed-up of pipeline.benchmarks.speedup" in proc.stderr
    assert "Traceback" not in proc.stderr
