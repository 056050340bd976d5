"""pipeline.compare: several experiments' summaries in one table, with the report's columns."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from pipeline.report import COLUMNS, write_csv


def summary(path: Path, rows: list[dict]) -> Path:
    write_csv(path, COLUMNS, [{"set": "test", "variant": r["model"].split("_")[1] if "_" in r["model"] else "teacher",
                               "alpha": "", "temperature": "", "seed": 1, "chrf": 50.0, "sent_per_s_beam": 10.0,
                               "parameters": 1000, **r} for r in rows])
    return path


def run_compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.compare", *args], text=True, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


def test_two_experiments_in_one_table(tmp_path: Path):
    first = summary(tmp_path / "results/default/summary.csv", [{"model": "teacher", "bleu": 30.0},
                                                               {"model": "student_baseline", "bleu": 20.0}])
    second = summary(tmp_path / "results/alpha09/summary.csv", [{"model": "teacher", "bleu": 30.0},
                                                                {"model": "student_word_kd_a0.9_t1", "bleu": 22.5,
                                                                 "alpha": 0.9, "delta_bleu_vs_baseline": 2.5}])
    out = tmp_path / "results"
    proc = run_compare("--summaries", str(first), str(second), "--csv", str(out / "compare.csv"), "--md", str(out / "compare.md"))
    assert proc.returncode == 0, proc.stderr
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", *COLUMNS]
    assert [(r["experiment"], r["model"], r["bleu"]) for r in rows] == [
        ("default", "teacher", "30.0"), ("default", "student_baseline", "20.0"), ("alpha09", "teacher", "30.0"),
        ("alpha09", "student_word_kd_a0.9_t1", "22.5")]
    md = (out / "compare.md").read_text()
    assert "Experiments: default, alpha09" in md and "## test" in md
    assert "| alpha09 | student_word_kd_a0.9_t1 | word | 0.9 | – | 1 | 22.50 | 50.00 | +2.50 |" in md


def test_not_a_summary_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "results/x/summary.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a,b\n1,2\n")
    proc = run_compare("--summaries", str(bad), "--csv", str(tmp_path / "c.csv"), "--md", str(tmp_path / "c.md"))
    assert proc.returncode == 2 and f"error: {bad}: not a report summary (no column set, model, bleu)" in proc.stderr
    proc = run_compare("--summaries", str(tmp_path / "none/summary.csv"), "--csv", str(tmp_path / "c.csv"),
                       "--md", str(tmp_path / "c.md"))
    assert proc.returncode == 2 and "not readable" in proc.stderr and "Traceback" not in proc.stderr
