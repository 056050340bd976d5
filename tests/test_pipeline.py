"""The whole workflow on the smoke config: teacher, distillation, all four student variants, evaluation, report."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MIRROR, REPO, data_dir, distill_dir, model_dir, results_dir, snakemake, stages, write_config

VARIANT_MODELS = ["teacher", "student_baseline", "student_seq_kd", "student_seq_word_kd_a0.5_t1",
                  "student_word_kd_a0.5_t1"]


@pytest.fixture(scope="module")
def smoke_run(smoke_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("smoke_pipeline")
    shutil.copytree(smoke_data, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".snakemake"))
    cfg = write_config(work)
    snakemake(work, "all", config=cfg, timeout=1800)
    return work, cfg


def jobs_in_dry_run(output: str) -> dict[str, int]:
    """Snakemake's own job-count table of a dry run: rule -> count."""
    counts = {}
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in table.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_summary_has_a_row_per_model(smoke_run):
    work, _ = smoke_run
    results = results_dir(work)
    assert results == work / "results/default"  # config experiment: default
    with (results / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == sorted(VARIANT_MODELS)
    for r in rows:
        assert 0.0 <= float(r["bleu"]) <= 100.0 and float(r["chrf"]) > 0.0
        assert float(r["sent_per_s_beam"]) > 0 and int(r["parameters"]) > 0
    teacher = next(r for r in rows if r["model"] == "teacher")
    assert float(teacher["speedup_vs_teacher"]) == pytest.approx(1.0)
    md = (results / "summary.md").read_text()
    assert "| student_seq_word_kd_a0.5_t1 |" in md and "BLEU signature" in md
    # the default config evaluates with CTranslate2 int8 too: one row per model in the second table
    with (results / "summary_ct2.csv").open() as f:
        ct2_rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in ct2_rows) == sorted(VARIANT_MODELS)
    assert {r["compute_type"] for r in ct2_rows} == {"int8"}
    assert all(float(r["speedup_vs_fairseq"]) > 0 for r in ct2_rows)
    assert "CTranslate2 compute type" in md
    # each student timed beside the teacher in one job per backend (evaluate.speedup_rounds: 2 in the smoke config)
    with (results / "summary_speedup.csv").open() as f:
        speedups = list(csv.DictReader(f))
    students = sorted(m for m in VARIANT_MODELS if m != "teacher")
    assert sorted((r["model"], r["backend"], r["compute_type"]) for r in speedups) == sorted(
        (m, backend, ctype) for m in students for backend, ctype in (("fairseq", ""), ("ctranslate2", "int8")))
    for r in speedups:
        assert (r["teacher"], r["set"], r["rounds"]) == ("teacher", "test", "2")
        assert int(r["sentences"]) == len(spm_test_lines(work))
        assert float(r["speedup_min"]) <= float(r["speedup_median"]) <= float(r["speedup_max"])
        tag = "fairseq" if r["backend"] == "fairseq" else "ct2-int8"
        timed = json.loads((results / f"eval/{r['model']}/test.speedup-{tag}.json").read_text())
        assert float(r["speedup_median"]) == pytest.approx(timed["pairs"][0]["speedup"]["median"])
        if r["backend"] == "fairseq":
            row = next(x for x in rows if x["model"] == r["model"])
            assert float(row["speedup_side_by_side"]) == pytest.approx(float(r["speedup_median"]))
    assert "## Speed-up against the teacher, timed side by side" in md
    for name in ("bleu_vs_speed", "bleu_vs_alpha", "training_curves"):
        png = (results / f"plots/{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def spm_test_lines(work: Path) -> list[str]:
    return (data_dir(work) / "spm/test.de").read_text().splitlines()


def test_every_model_translates_with_model_alone_and_carries_its_spec(smoke_run):
    """`pipeline.translate --model work/models/<dir>/model.pt`, no other flag, on every model the run trained
    (the students on distilled data included: spm.model lies beside each model.pt); spec.json says what it is."""
    work, _ = smoke_run
    data, distilled, results = data_dir(work), distill_dir(work), results_dir(work)
    source = (data / "raw/test.de").read_text().splitlines()[:4]
    for name in VARIANT_MODELS:
        directory = model_dir(work, name)
        assert (directory / "spm.model").read_bytes() == (data / "spm/spm.model").read_bytes()
        proc = subprocess.run([sys.executable, "-m", "pipeline.translate", "--model", str((directory / "model.pt").relative_to(work))],
                              input="\n".join(source) + "\n", text=True, capture_output=True, cwd=work, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        out = proc.stdout.splitlines()
        assert len(out) == len(source) and all(line.strip() for line in out), (name, out)
        spec = json.loads((directory / "spec.json").read_text())
        assert spec["name"] == name and spec["src"] == "de" and spec["tgt"] == "en"
        assert spec["spm"] == str((data / "spm/spm.model").relative_to(work))
        assert spec["train_data"] == str(((distilled if spec["targets"] == "distilled" else data) / "bin").relative_to(work))
        evaluation = json.loads((results / f"eval/{name}/test.json").read_text())
        assert evaluation["spec"] == spec  # what the report reads
    specs = {name: json.loads((model_dir(work, name) / "spec.json").read_text()) for name in VARIANT_MODELS}
    assert specs["teacher"]["variant"] == "teacher" and specs["teacher"]["teacher"] is None
    assert specs["student_baseline"]["teacher"] is None and specs["student_seq_kd"]["teacher"] == "teacher"
    kd = specs["student_seq_word_kd_a0.5_t1"]
    assert (kd["variant"], kd["alpha"], kd["temperature"], kd["criterion"]) == ("seq_word_kd", 0.5, 1.0, "word_kd")
    with (results / "summary.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert (rows["student_word_kd_a0.5_t1"]["variant"], rows["student_word_kd_a0.5_t1"]["alpha"]) == ("word_kd", "0.5")


def test_html_report(smoke_run):
    work, cfg = smoke_run
    snakemake(work, "all", "--report", "report.html", config=cfg)
    html = (work / "report.html").read_text(errors="replace")
    assert len(html) > 10000
    for item in ("summary.csv", "summary_speedup.csv", "bleu_vs_speed.png", "clean_stats.json", "stats.json"):
        assert item in html, item


def test_nothing_left_to_do_and_forcerun_distill_reruns_only_downstream(smoke_run):
    work, cfg = smoke_run
    assert "Nothing to be done" in snakemake(work, "-n", "all", config=cfg).stdout
    dry = snakemake(work, "-n", "all", "--forcerun", "distill_merge", config=cfg).stdout
    jobs = jobs_in_dry_run(dry)
    assert jobs.get("distill_merge") == 1
    # downstream: the distilled data, the two seq-KD students, their evaluations, the report
    assert jobs.get("train_model") == 2
    for rule in ("fetch_corpus", "binarize", "distill_shard_index", "distill_decode_shard", "distill_postprocess"):
        assert rule not in jobs, f"{rule} is upstream of the forced rule: {jobs}"


def test_alpha_list_expands_into_students(smoke_data: Path, tmp_path: Path):
    cfg = write_config(tmp_path, {"students": {"variants": ["baseline", "seq_word_kd"], "alpha": [0.1, 0.5, 0.9]}})
    shutil.copytree(smoke_data / "work", tmp_path / "work")
    dry = snakemake(tmp_path, "-n", "students", config=cfg).stdout
    trained = set(re.findall(r"work/models/([^/\s]+)-[0-9a-f]{8}/model\.pt", dry))
    assert {"student_baseline", "student_seq_word_kd_a0.1_t1", "student_seq_word_kd_a0.5_t1",
            "student_seq_word_kd_a0.9_t1"} <= trained
    assert not any(name.startswith("student_word_kd") or name == "student_seq_kd" for name in trained)


def test_changed_beam_reruns_distillation_and_what_follows_only(smoke_run):
    work, first_cfg = smoke_run
    cfg = write_config(work / "beam3", {"distill": {"beam": 3}})  # beside, not over, the run's config
    first, beam3 = stages(work, first_cfg), stages(work, cfg)  # the data and the teacher shared, a new distillation
    assert (beam3.data_dir, beam3.model_dir("teacher")) == (first.data_dir, first.model_dir("teacher"))
    assert beam3.distill_dir != first.distill_dir and beam3.distill_dir.startswith("work/distill/seq_inter_beam3-")
    jobs = jobs_in_dry_run(snakemake(work, "-n", "all", config=cfg).stdout)
    assert jobs.get("distill_decode_shard") == 3 and jobs.get("distill_postprocess") == 3
    assert jobs.get("distill_merge") == 1 and "distill_shard_index" not in jobs
    assert jobs.get("train_model") == 2  # the two students on distilled targets, not the teacher
    assert jobs.get("evaluate_model") == 2
    for rule in ("fetch_corpus", "spm_train", "binarize"):
        assert rule not in jobs, jobs


def test_gpu_config_plans_the_full_comparison(tmp_path: Path):
    """config/gpu.yaml validates and plans: IWSLT teacher, every variant, one word-KD student per alpha, ct2 distillation."""
    cfg = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
    cfg.setdefault("data", {})["mirror"] = str(MIRROR)
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dry = snakemake(tmp_path, "-n", "all", config=path).stdout
    jobs = jobs_in_dry_run(dry)
    trained = set(re.findall(r"work/models/([^/\s]+)-[0-9a-f]{8}/model\.pt", dry))
    alphas = ("0.1", "0.5", "0.9")
    assert trained == {"teacher", "student_baseline", "student_seq_kd",
                       *(f"student_{v}_a{a}_t1" for v in ("word_kd", "seq_word_kd") for a in alphas)}
    assert jobs["train_model"] == 9
    # before the data stage the shard count is unknown: the dry run ends the distillation at the checkpoint
    assert jobs["distill_shard_index"] == 1 and "distill_decode_shard" not in jobs and jobs["distill_merge"] == 1
    assert "--shard-size 8000" in dry
    assert "--preset teacher_iwslt" in dry and "--preset student_gpu" in dry
    # config/config.yaml's CPU-demo settings do not leak in (Snakemake merges the two files key by key)
    assert dry.count("--max-epoch 60") == 9 and "--max-epoch" not in dry.replace("--max-epoch 60", "")
    assert "--lr 0.0005" in dry and "--lr 0.002" not in dry and "--vocab-size 8000" in dry
    assert "pipeline.distill.decode_shard" not in dry  # planned once the index exists (the test below)
    assert "results/default/summary_ct2.csv" in dry and "--ct2-evals" in dry  # the report's CTranslate2 table


@pytest.mark.slow
def test_gpu_config_plans_four_shards_on_multi30k(tmp_path: Path):
    """With the data stage run on the whole of Multi30k and the shard index made, the dry run of config/gpu.yaml
    shows the whole distillation: 4 shards of at most distill.shard_size 8000 pairs, each decoded with
    CTranslate2 and post-processed with seq_inter, and the merge."""
    cfg = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
    cfg.setdefault("data", {})["mirror"] = str(MIRROR)
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    index_path = data_dir(tmp_path, path) / "distill_index-8000.json"
    snakemake(tmp_path, str(index_path.relative_to(tmp_path)), config=path, timeout=1800)
    index = json.loads(index_path.read_text())
    assert index["shards"] == 4 and index["lines"] > 3 * 8000, index["lines"]
    dry = snakemake(tmp_path, "-n", "all", config=path).stdout
    jobs = jobs_in_dry_run(dry)
    assert jobs["distill_decode_shard"] == 4 and jobs["distill_postprocess"] == 4 and jobs["distill_merge"] == 1
    assert "distill_shard_index" not in jobs and "--backend ctranslate2" in dry and "--selection seq_inter" in dry


UPSTREAM_RULES = {"fetch_corpus", "normalize", "clean_train", "spm_train", "spm_encode", "binarize", "distill_shard_index",
                  "distill_decode_shard", "distill_postprocess", "distill_merge", "distill_binarize", "kdcache_shard",
                  "kdcache_index", "ct2_vmap"}


def test_second_experiment_shares_upstream_work_and_compares(smoke_run):
    """Two experiments that differ only in students.alpha: the second reuses the first's data, teacher,
    distillation and teacher caches (its dry run plans none of their jobs), trains only its new students, has
    results of its own, and `snakemake compare` puts both experiments' rows into one table."""
    work, first_cfg = smoke_run
    cfg = write_config(work / "alpha09", {"experiment": "alpha09", "students": {"alpha": [0.9]}})
    first, second = stages(work, first_cfg), stages(work, cfg)
    assert second.results_dir == "results/alpha09"
    assert second.data_dir == first.data_dir and second.distill_dir == first.distill_dir
    assert second.kdcache == first.kdcache and second.model_dir("teacher") == first.model_dir("teacher")
    assert second.model_dir("student_baseline") == first.model_dir("student_baseline")
    dry = snakemake(work, "-n", "-p", "all", config=cfg).stdout
    jobs = jobs_in_dry_run(dry)
    assert not UPSTREAM_RULES & set(jobs), jobs
    trained = set(re.findall(r"--output work/models/(\S+)/model\.pt", dry))
    assert trained == {second.models[name].dir for name in ("student_word_kd_a0.9_t1", "student_seq_word_kd_a0.9_t1")}
    assert jobs["train_model"] == 2 and jobs["report_summary"] == 1

    snakemake(work, "all", config=cfg, timeout=1800)
    for name, results in (("alpha09", work / "results/alpha09"), ("default", work / "results/default")):
        with (results / "summary.csv").open() as f:
            models = {r["model"] for r in csv.DictReader(f)}
        alpha = "0.9" if name == "alpha09" else "0.5"
        assert models == {"teacher", "student_baseline", "student_seq_kd", f"student_seq_word_kd_a{alpha}_t1",
                          f"student_word_kd_a{alpha}_t1"}, (name, models)
    # every model of the experiment, trained here or shared, has its records and TensorBoard logs under it
    for name in second.specs:
        assert (work / f"results/alpha09/train/{name}.jsonl").stat().st_size > 0
        link = work / f"results/alpha09/tb/{name}"
        assert link.is_symlink() and link.resolve() == (work / second.model_dir(name) / "tb").resolve()
        assert any(link.iterdir()), name  # fairseq's event files
    # what `tensorboard --logdir results/alpha09/tb` finds: event files of every model, through the links
    from tensorboard.backend.event_processing import io_wrapper

    tb = work / "results/alpha09/tb"
    assert {Path(run).relative_to(tb).parts[0] for run in io_wrapper.GetLogdirSubdirectories(str(tb))} == set(second.specs)
    settings = json.loads((work / second.model_dir("student_seq_word_kd_a0.9_t1") / "settings.json").read_text())
    assert settings["key"] == second.models["student_seq_word_kd_a0.9_t1"].key
    assert settings["settings"]["alpha"] == 0.9 and settings["settings"]["data"] == first.distill.key

    snakemake(work, "compare", config=cfg)
    with (work / "results/compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["experiment", "set", "model"]
    assert {(r["experiment"], r["model"]) for r in rows} >= {
        ("default", "student_word_kd_a0.5_t1"), ("alpha09", "student_word_kd_a0.9_t1"), ("default", "teacher"),
        ("alpha09", "teacher")}
    assert len(rows) == 10  # five models on the test set, per experiment
    md = (work / "results/compare.md").read_text()
    assert "| alpha09 | student_seq_word_kd_a0.9_t1 |" in md and "| default | teacher |" in md
