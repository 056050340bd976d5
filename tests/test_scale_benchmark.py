"""The scale benchmark's quick mode: every stage runs as its own process and the table is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

STAGES = ["normalize (de)", "normalize (en)", "clean", "spm train (once, bounded sample)", "spm encode (de)",
          "spm encode (en)", "shard index", "teacher stand-in (not a pipeline stage)",
          "post-process (sum of shard jobs)", "merge", "binarize (fairseq-preprocess)"]


def test_quick_scale_benchmark_prints_its_table():
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.scale", "--quick", "--workers", "2", "--jobs", "2"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stage | pairs | wall (s) | s per 1M pairs | CPU (s) | of it kernel (s) | peak RSS (MiB) |" in proc.stdout
    for stage in STAGES:
        assert f"| {stage} | 2,000 |" in proc.stdout, stage
    assert "merge / post-processing at 2,000 pairs:" in proc.stdout
    assert "merge at 2,000 pairs, every run's wall time (s): " in proc.stdout  # three runs, the median in the table
    runs = proc.stdout.split("every run's wall time (s): ")[1].split(" (the table")[0].split(", ")
    median = sorted(runs, key=float)[1]
    assert len(runs) == 3 and f"| merge | 2,000 | {median} |" in proc.stdout


def test_scale_benchmark_stops_after_the_stages_asked_for():
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.scale", "--quick", "--workers", "1", "--until", "clean"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages until clean" in proc.stdout
    ran = [stage for stage in STAGES if f"| {stage} | 2,000 |" in proc.stdout]
    assert ran == ["normalize (de)", "normalize (en)", "clean"]
    assert "merge / post-processing" not in proc.stdout


def test_scale_benchmark_can_binarise_the_cleaned_corpus_instead_of_distilling():
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.scale", "--quick", "--workers", "1", "--skip-distill"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distillation skipped (the cleaned corpus binarised)" in proc.stdout
    ran = [stage for stage in STAGES if f"| {stage} | 2,000 |" in proc.stdout]
    assert ran == STAGES[:STAGES.index("shard index") + 1]
    assert "| binarize (fairseq-preprocess, cleaned corpus) | 2,000 |" in proc.stdout


@pytest.mark.skipif(not hasattr(os, "POSIX_FADV_DONTNEED") or not os.path.isdir("/proc/self/fd"), reason="Linux only")
def test_a_measured_stage_reads_its_cold_inputs_from_disk(tmp_path, monkeypatch):
    """measure(cold=...) syncs, then drops each named file from the page cache, before the stage starts."""
    from pipeline.benchmarks import scale

    files = [tmp_path / "a", tmp_path / "b"]
    for f in files:
        f.write_text("x\n")
    events = []
    monkeypatch.setattr(os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: events.append(
        (os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice)), raising=False)
    run = scale.measure([sys.executable, "-c", "pass"], tmp_path / "log", cold=files)
    assert run.wall_s > 0
    assert events == ["sync"] + [(str(f), 0, 0, os.POSIX_FADV_DONTNEED) for f in files]
