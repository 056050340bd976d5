"""pipeline.report on evaluation results as pipeline.evaluate writes them, with and without CTranslate2 rows."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

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
