"""pipeline.benchmarks.gpu_check without a GPU: it skips with a message and its own exit status; its
configs pass the schema; its tolerance check flags what is outside. (The check itself needs CUDA.)"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import REPO, deep_merge
from snakemake.utils import validate

from pipeline.benchmarks import gpu_check


def test_skips_clearly_without_cuda(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.gpu_check", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == gpu_check.SKIPPED_STATUS, proc.stderr
    assert "SKIPPED: no CUDA device visible" in proc.stderr and "unmeasured" in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing started


def test_run_configs_pass_the_schema(tmp_path):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for gpu in (True, False):
        cfg = deep_merge(base, gpu_check.run_config(tmp_path, gpu, 2))
        validate(cfg, str(REPO / "config" / "schema.yaml"))
        assert cfg["resources"]["train"]["gpus"] == (1 if gpu else 0)
        assert cfg["ct2"]["evaluate_compute_types"] == (["float16"] if gpu else ["float32"])
        assert cfg["students"]["variants"] == ["seq_word_kd"]
    longer = deep_merge(base, gpu_check.run_config(tmp_path, True, 2, max_update=400))
    validate(longer, str(REPO / "config" / "schema.yaml"))
    assert (longer["train"]["max_update"], longer["train"]["save_interval_updates"]) == (400, 200)


def test_compare_flags_what_is_outside_the_tolerances():
    cpu = {"bleu": {"teacher fairseq": 10.0, "teacher ct2": 10.0}}
    near = {"bleu": {"teacher fairseq": 10.4, "teacher ct2": 9.6}, "agreement": {"teacher ct2 float16": 95.0}}
    assert gpu_check.compare(near, cpu, 0.5, 90) == []
    far = {"bleu": {"teacher fairseq": 10.6, "teacher ct2": 10.0}, "agreement": {"teacher ct2 float16": 80.0}}
    problems = gpu_check.compare(far, cpu, 0.5, 90)
    assert len(problems) == 2
    assert problems[0].startswith("teacher fairseq: test BLEU 10.60 on GPU vs 10.00 on CPU")
    assert problems[1].startswith("teacher ct2 float16: BLEU against the CPU translation 80.0")
    assert gpu_check.compare(far, cpu, 0.5, None) == problems[:1]  # agreement reported, not checked
