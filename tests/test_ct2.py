"""The CTranslate2 backend: conversion, fairseq-faithful decoding, the exported student without fairseq,
the CTranslate2 evaluation through the Snakefile, and (once wired) the distillation with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SNAKEMAKE, data_dir, distill_dir, model_dir, results_dir, stages, write_config

from pipeline.corpus import read_lines
from pipeline.decoding import BatchSettings, SearchOptions, batching, compute, ct2_dir
from pipeline.decoding import ct2_backend as ct2
from pipeline.decoding.convert import convert
from pipeline.errors import BackendError, ModelError

FAST = dict(max_len_a=1.2, max_len_b=10)


def run_stage(module: str, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, text=True, capture_output=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def data(smoke_data) -> Path:
    return data_dir(smoke_data)


@pytest.fixture(scope="module")
def converted(tiny_teacher, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct2") / "teacher"
    convert(tiny_teacher, out, data_dir=data / "bin", spm=data / "spm" / "spm.model")
    return out


@pytest.fixture(scope="module")
def fairseq_teacher(tiny_teacher):
    from pipeline.decoding.fairseq_model import load_model

    return load_model(tiny_teacher, cpu=True)


# ------------------------------------------------------------------------------------------------
# Pure functions


def test_batches_are_formed_as_fairseq_forms_them():
    lengths = [5, 3, 9, 3, 4, 9, 2]
    batches = batching.make_batches(lengths, BatchSettings(max_tokens=12))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[2, 3, 3], [4, 5], [9], [9]]  # padded size <= 12
    assert batching.make_batches(lengths, BatchSettings(max_tokens=None, batch_size=3)) == [[6, 1, 3], [4, 0, 2], [5]]
    assert batching.make_batches([], BatchSettings()) == []
    assert batching.make_batches([50], BatchSettings(max_tokens=10)) == [[0]]  # too long alone: its own batch


def test_compute_types_and_threads():
    assert compute.resolve_compute_type("auto", "cpu") == compute.DEFAULT_COMPUTE_TYPE["cpu"]
    assert compute.resolve_compute_type("cpu=int8,cuda=float16", "cpu") == "int8"
    assert compute.resolve_compute_type("float32", "cpu") == "float32"
    with pytest.raises(BackendError, match="not supported on cpu"):
        compute.resolve_compute_type("float16", "cpu")
    with pytest.raises(BackendError, match="DEVICE=TYPE"):
        compute.resolve_compute_type("tpu=int8", "cpu")
    assert compute.split_threads(4, device="cuda") == (1, 4)
    assert compute.split_threads(4) == ((4, 1) if compute.DEFAULT_INTER_THREADS == "all" else (1, 4))
    assert compute.split_threads(4, inter=2) == (2, 2)
    assert compute.split_threads(4, intra=1) == (4, 1)
    assert compute.split_threads(4, 3, 3) == (3, 3)


# ------------------------------------------------------------------------------------------------
# Conversion and decoding against fairseq


def test_conversion_writes_a_self_contained_directory(converted):
    for name in ("model.bin", "config.json", ct2_dir.SPM, ct2_dir.META):
        assert (converted / name).is_file(), name
    meta = json.loads((converted / ct2_dir.META).read_text())
    assert meta["source_lang"] == "de" and meta["target_lang"] == "en" and meta["quantization"] == "float32"
    assert json.loads((converted / "config.json").read_text())["layer_norm_epsilon"] == pytest.approx(1e-5)
    assert not list(converted.parent.glob(".*tmp*"))  # the temporary directory is gone


def assert_float32_greedy_matches_fairseq(ct2_model_dir: Path, fairseq_model, data: Path) -> None:
    """The converted model's float32 greedy output equals fairseq's on 8 test sentences: tokens, lengths, scores."""
    from pipeline.decoding.fairseq_backend import decode_lines

    lines = read_lines(data / "spm" / "test.de")[:8]
    gen = SearchOptions(beam=1, **FAST)
    expected = decode_lines(fairseq_model, lines, gen)
    got = ct2.decode_lines(ct2.load(ct2_model_dir, compute_type="float32", threads=1), lines, gen)
    assert [n[0].tokens for n in got] == [n[0].tokens for n in expected]
    assert [n[0].length for n in got] == [n[0].length for n in expected]
    # fairseq's score convention, forced EOS at the length cap included (see pipeline.decoding.ct2_backend for what remains)
    for g, e in zip(got, expected, strict=True):
        assert g[0].score == pytest.approx(e[0].score, abs=0.05)


def test_float32_greedy_matches_fairseq_token_for_token(converted, fairseq_teacher, data):
    assert_float32_greedy_matches_fairseq(converted, fairseq_teacher, data)


def test_prenorm_model_converts_and_decodes_as_fairseq(data, tmp_path):
    """Pre-norm layers (the default students' preset): CTranslate2 reads them from the checkpoint's settings."""
    from conftest import train_tiny

    from pipeline.decoding.fairseq_model import load_model
    from pipeline.presets import preset_args

    prenorm = [flag for flag in preset_args("student_deep_shallow_prenorm") if flag.endswith("-normalize-before")]
    assert prenorm == ["--encoder-normalize-before", "--decoder-normalize-before"]
    checkpoint = train_tiny(data / "bin", tmp_path / "prenorm", extra=prenorm)
    fairseq_model = load_model(checkpoint, cpu=True)
    assert fairseq_model.model.encoder.layers[0].normalize_before and fairseq_model.model.decoder.layers[0].normalize_before
    convert(checkpoint, tmp_path / "ct2", data_dir=data / "bin", spm=data / "spm" / "spm.model")
    assert_float32_greedy_matches_fairseq(tmp_path / "ct2", fairseq_model, data)


def test_nbest_lists_come_back_in_input_order(converted, data):
    lines = read_lines(data / "spm" / "train.de")[:40]
    # a fixed length cap: with max_len_a > 0 the cap is the batch's (as in fairseq), so other batches can change outputs
    gen = SearchOptions(beam=3, nbest=3, max_len_a=0, max_len_b=20)
    batch = BatchSettings(max_tokens=150)  # several batches, decoded concurrently
    model = ct2.load(converted, compute_type="float32", threads=2, inter_threads=2)
    forward = ct2.decode(model, lines, gen, batch)
    assert forward.stats.batches > 3 and forward.stats.sentences == len(lines)
    assert len(forward.hypotheses) == len(lines)
    for nbest in forward.hypotheses:
        assert len(nbest) == 3
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        assert all(h.length == len(h.tokens.split()) for h in nbest)
    backward = ct2.decode_lines(model, lines[::-1], gen, batch)
    assert [n[0].tokens for n in backward[::-1]] == [n[0].tokens for n in forward.hypotheses]
    assert ct2.decode_lines(model, [], gen) == []


def test_not_a_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model.bin"):
        ct2.load(tmp_path)


def test_vocabulary_shortlist_restricts_what_can_be_generated(tiny_teacher, converted, data, tmp_path):
    from pipeline.vmap import write_vmap

    with pytest.raises(ModelError, match="no vmap.txt"):
        ct2.load(converted, use_vmap=True)
    lines = read_lines(data / "spm" / "test.de")[:20]
    gen = SearchOptions(beam=2, **FAST)
    full = ct2.load(converted, compute_type="float32", threads=1)
    produced = [p for n in ct2.decode_lines(full, lines, gen) for p in n[0].tokens.split()]
    allowed = sorted(set(produced), key=produced.count)[-3:]  # three of the pieces the teacher uses most
    vmap = tmp_path / "vmap.txt"
    write_vmap(vmap, allowed, {})
    out = convert(tiny_teacher, tmp_path / "with_vmap", data_dir=data / "bin", spm=data / "spm" / "spm.model",
                      vmap=vmap)
    assert (out / ct2_dir.VMAP).is_file() and json.loads((out / ct2_dir.META).read_text())["vmap"] == ct2_dir.VMAP
    assert not ct2.load(out).use_vmap  # stored, not used unless asked (or chosen by an export)
    short = ct2.load(out, compute_type="float32", threads=1, use_vmap=True)
    assert short.runtime_info()["vocabulary_shortlist"] is True
    restricted = ct2.decode_lines(short, lines, gen)
    assert len(restricted) == len(lines)
    assert {p for n in restricted for p in n[0].tokens.split()} <= set(allowed)
    assert len(set(produced)) > len(allowed)


def test_benchmark_measures_each_compute_type_with_and_without_the_shortlist(tiny_teacher, data, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_stage("pipeline.benchmarks.ct2_vs_fairseq", "--model", str(tiny_teacher), "--data", str(data / "bin"),
                     "--src", str(data / "spm" / "train.de"), "--quick", "--n", "60", "--tune-n", "30",
                     "--test-n", "30", "--compute-types", "int8", "--max-tokens", "1000", "--batch-sizes",
                     "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["ctranslate2"]) == {"int8", "int8 + vmap"}
    for name, r in report["ctranslate2"].items():
        assert r["vmap"] == name.endswith("vmap")
        assert r["speed"]["sentences"] == 60 and r["ratio"] > 0 and 0 <= r["identical_to_fairseq"] <= 1
        assert r["test_bleu"] >= 0
    assert report["vmap"]["source_pieces"] > 0 and report["fastest"] == "int8"
    assert "| ct2 int8 + vmap |" in proc.stdout
    # int8 again in child processes, the library's default first (the caps depend on the CI machine's CPU)
    isa = report["isa"]
    assert isa[0]["env"] == {} and "default" in isa[0]["label"]
    for row in isa:
        assert row["speed"]["sentences"] == 60 and row["ratio"] > 0 and 0 <= row["identical_to_fairseq"] <= 1
    assert isa[0]["identical_to_fairseq"] == report["ctranslate2"]["int8"]["identical_to_fairseq"]  # same decoding
    assert isa[0]["test_bleu"] == report["ctranslate2"]["int8"]["test_bleu"]
    assert report["cpu"]["int8_gemm"] in ("MKL", "oneDNN") and "| int8 GEMM variant |" in proc.stdout


def test_speedup_benchmark_alternates_teacher_and_student_under_each_backend(tiny_teacher, converted, data, tmp_path):
    """Both models of a pair decode the same sentences in alternating passes (teacher first in even rounds, student
    first in odd ones); each round's speed-up is the teacher's seconds over the student's; a pair must share a backend."""
    out = tmp_path / "speedup.json"
    src = data / "spm" / "test.de"
    proc = run_stage("pipeline.benchmarks.speedup", "--src", str(src), "--n", "40", "--rounds", "3", "--beam", "2",
                     "--threads", "1", "--data", str(data / "bin"), "--pair", str(tiny_teacher), str(tiny_teacher),
                     "--pair", str(converted), str(converted), "--names", "teacher", "student_x", "--names", "teacher",
                     "student_y", "--set", "test", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["pairs"]] == ["fairseq", "ctranslate2"]
    assert [(r["teacher"]["name"], r["student"]["name"]) for r in report["pairs"]] == [("teacher", "student_x"),
                                                                                       ("teacher", "student_y")]
    assert report["search"]["beam"] == 2 and report["set"] == "test"
    for r in report["pairs"]:
        assert r["sentences"] == 40
        teacher, student, speedup = r["teacher"]["seconds"], r["student"]["seconds"], r["speedup"]
        assert len(teacher) == len(student) == len(speedup["rounds"]) == 3
        assert speedup["rounds"] == pytest.approx([t / s for t, s in zip(teacher, student, strict=True)])
        assert speedup["min"] <= speedup["median"] <= speedup["max"]
        assert r["student"]["sentences_per_s"] > 0 and r["teacher"]["runtime"]["device"] == "cpu"
    order = [line.split("speedup | ")[1].split(":")[0] for line in proc.stderr.splitlines() if "speedup | round" in line]
    assert order[:6] == ["round 1 teacher", "round 1 student", "round 2 student", "round 2 teacher",
                         "round 3 teacher", "round 3 student"]
    assert "| fairseq |" in proc.stdout and "| ctranslate2 |" in proc.stdout
    mixed = run_stage("pipeline.benchmarks.speedup", "--src", str(src), "--n", "5", "--data", str(data / "bin"),
                      "--pair", str(tiny_teacher), str(converted))
    assert mixed.returncode == 2
    assert f"--pair {tiny_teacher} {converted}: a fairseq teacher and a ctranslate2 student" in mixed.stderr
    unnamed = run_stage("pipeline.benchmarks.speedup", "--src", str(src), "--pair", str(converted), str(converted),
                        "--pair", str(converted), str(converted), "--names", "teacher", "student_x")
    assert unnamed.returncode == 2 and "--names given 1 times for 2 --pair" in unnamed.stderr


XEON = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n"
EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"


def test_translate_batches_a_ctranslate2_directory_as_its_export_measured_it():
    import argparse

    from pipeline.decoding.batching import ct2_batch

    def args(max_tokens=None, batch_size=None):
        return argparse.Namespace(max_tokens=max_tokens, batch_size=batch_size)

    exported = {"decoding": {"max_tokens": 1000, "batch_size": 8}}
    assert ct2_batch(args(), exported) == BatchSettings(max_tokens=1000, batch_size=8)
    assert ct2_batch(args(), {"decoding": {"max_tokens": None, "batch_size": 16}}) == BatchSettings(None, 16)
    assert ct2_batch(args(), {}) == BatchSettings(max_tokens=1000, batch_size=8)  # a plain conversion
    assert ct2_batch(args(batch_size=4), exported) == BatchSettings(max_tokens=None, batch_size=4)  # given wins
    assert ct2_batch(args(max_tokens=6000), exported) == BatchSettings(max_tokens=6000, batch_size=None)
    assert ct2_batch(args(), {}, device="cuda") == BatchSettings(max_tokens=6000, batch_size=None)


def test_instruction_set_variants_follow_the_cpu_and_ctranslate2s_library_choice():
    from pipeline.benchmarks import cpu_isa

    xeon, epyc = cpu_isa.cpu_description(XEON), cpu_isa.cpu_description(EPYC)
    assert xeon == {"vendor": "GenuineIntel", "model": "Intel(R) Xeon(R)", "int8_flags": ["avx2", "avx512f", "avx512_vnni", "amx_int8"]}
    assert cpu_isa.int8_gemm_library(xeon, {}) == "MKL" and cpu_isa.int8_gemm_library(epyc, {}) == "oneDNN"
    assert [v.env for v in cpu_isa.variants(xeon, {})] == [
        {}, {"MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"CT2_USE_MKL": "0"}]
    # no AMX to take away on this EPYC; oneDNN is CTranslate2's only int8 library there
    assert [v.env for v in cpu_isa.variants(epyc, {})] == [{}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}]
    # CT2_USE_MKL=0 already set: oneDNN is the default, capped by oneDNN's variable
    assert [v.env for v in cpu_isa.variants(xeon, {"CT2_USE_MKL": "0"})] == [
        {}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}]
    assert cpu_isa.cpu_description("") == {"vendor": "?", "model": "?", "int8_flags": []}


# ------------------------------------------------------------------------------------------------
# The exported student: translation without fairseq (and without torch)

NO_FAIRSEQ = """
import runpy, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fairseq", "torch"):
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Blocked())
sys.argv = ["translate", *sys.argv[1:]]
try:
    runpy.run_module("pipeline.translate", run_name="__main__")
finally:
    loaded = [m for m in ("fairseq", "torch") if m in sys.modules]
    print("LOADED:", loaded, file=sys.stderr)
"""


def test_exported_student_translates_raw_text_without_fairseq(tiny_teacher, data, tmp_path):
    out = tmp_path / "export" / "teacher"
    proc = run_stage(
        "pipeline.export", "--model", str(tiny_teacher), "--name", "teacher", "--out", str(out),
        "--data", str(data / "bin"), "--spm", str(data / "spm" / "spm.model"),
        "--src-pieces", str(data / "spm" / "test.de"), "--ref", str(data / "raw" / "test.en"),
        "--beam", "2", "--max-tokens", "2000", "--threads", "1", "--compute-types", "int8", "float32",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / ct2_dir.META).read_text())
    assert meta["quantization"] == "int8" and meta["name"] == "teacher"
    assert set(meta["evaluation"]["ctranslate2"]) == {"int8", "float32"}
    readme = (out / "README.md").read_text()
    assert "BLEU" in readme and "sentences/s" in readme and "| CTranslate2 int8 " in readme

    moved = tmp_path / "elsewhere"  # self-contained: nothing outside the directory is needed
    shutil.move(out, moved)
    shutil.rmtree(tmp_path / "export")
    source = ["Ein Mann fährt mit dem Fahrrad.", "", *read_lines(data / "raw" / "test.de")[:3]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", NO_FAIRSEQ, "--model", str(moved), "--beam", "2"],
                          input="\n".join(source) + "\n", text=True, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED: []" in proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(source)
    assert lines[1] == ""
    for line in lines[:1] + lines[2:-1]:
        assert line.strip() and "▁" not in line and "</s>" not in line


# ------------------------------------------------------------------------------------------------
# Through the Snakefile (a copy with pipeline/rules/ct2.smk included, as long as the real one lacks it)


def snakefile_with_ct2(tmp_path: Path) -> Path:
    text = (REPO / "Snakefile").read_text()
    if "pipeline/rules/ct2.smk" in text:
        return REPO / "Snakefile"
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".venv", ".git", "work", "results", "logs", "benchmarks",
                                                              "export", "__pycache__", ".snakemake", ".pytest_cache"))
    anchor = 'include: "pipeline/rules/evaluate.smk"\n'
    assert anchor in text
    (repo / "Snakefile").write_text(text.replace(anchor, anchor + 'include: "pipeline/rules/ct2.smk"\n', 1))
    return repo / "Snakefile"


def run_snakefile(snakefile: Path, workdir: Path, *args: str, config: Path) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, *args, "-s", str(snakefile), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(config)]
    env = dict(os.environ, PYTHONPATH=str(snakefile.parent))
    proc = subprocess.run(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc


def workdir_with_teacher(smoke_data: Path, tiny_teacher: Path, workdir: Path) -> Path:
    shutil.copytree(smoke_data, workdir, symlinks=True)
    teacher = model_dir(workdir, "teacher", write_config(workdir)) / "model.pt"  # (the tests' settings keep its key)
    teacher.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_teacher, teacher)
    now = time.time() + 1  # newer than every data output: never retrained
    os.utime(teacher, (now, now))
    return workdir


def test_ct2_evaluation_and_export_through_the_snakefile(smoke_data, tiny_teacher, tmp_path):
    snakefile = snakefile_with_ct2(tmp_path)
    workdir = workdir_with_teacher(smoke_data, tiny_teacher, tmp_path / "run")
    config = write_config(workdir, {
        "evaluate": {"backends": ["fairseq", "ctranslate2"], "max_len_a": 0, "max_len_b": 8},
        "ct2": {"evaluate_compute_types": ["float32", "int8"], "export": {"models": ["teacher"]}},
        "resources": {"evaluate": {"threads": 1, "gpus": 0}},
    })
    dry = run_snakefile(snakefile, workdir, "-n", "export", "evaluate", config=config).stdout
    for rule in ("ct2_convert", "evaluate_model_ct2", "export_model", "evaluate_model"):
        assert rule in dry, rule
    assert "results/default/eval/teacher/test.ct2-int8.json" in dry and "export/default/teacher" in dry
    target = "results/default/eval/teacher/test.ct2-int8.json"
    run_snakefile(snakefile, workdir, target, "--allowed-rules", "model_files", "ct2_convert", "evaluate_model_ct2",
                  config=config)
    layout = stages(workdir, config)
    result = json.loads((workdir / target).read_text())
    assert result["backend"] == "ctranslate2" and result["compute_type"] == "int8"
    assert result["spec"]["name"] == "teacher" and result["spec"]["variant"] == "teacher"
    assert result["sentences"] == len(read_lines(data_dir(workdir, config) / "raw/test.en"))
    for mode in ("beam", "greedy"):
        assert result[mode]["bleu"]["signature"].startswith("nrefs:1")
        assert result[mode]["speed"]["sentences_per_s"] > 0
        assert len(read_lines(workdir / result[mode]["hypotheses"])) == result["sentences"]
    assert result["runtime"]["device"] == "cpu"
    assert (workdir / layout.ct2_dir("teacher") / "model.bin").is_file()
    assert (workdir / f"logs/ct2/convert.{layout.ct2['teacher'].dir}.log").is_file()
    assert (workdir / f"benchmarks/eval/{results_dir(workdir, config).name}/teacher.test.ct2-int8.tsv").is_file()


def test_vocabulary_shortlist_through_the_snakefile(smoke_data, tiny_teacher, tmp_path):
    """ct2.vmap.enabled: the shortlist is built from the training corpus, stored with every conversion and
    used by the CTranslate2 evaluation (the report marks it), the distillation and the export."""
    snakefile = snakefile_with_ct2(tmp_path)
    workdir = workdir_with_teacher(smoke_data, tiny_teacher, tmp_path / "run")
    config = write_config(workdir, {
        "evaluate": {"backends": ["fairseq", "ctranslate2"], "max_len_a": 0, "max_len_b": 8, "speed_runs": 1},
        "ct2": {"evaluate_compute_types": ["int8"], "export": {"models": ["teacher"]},
                "vmap": {"enabled": True, "frequent": 50, "per_source": 10}},
        "distill": {"backend": "ctranslate2"},
        "resources": {"evaluate": {"threads": 1, "gpus": 0}},
    })
    dry = run_snakefile(snakefile, workdir, "-n", "-p", "export", "evaluate", "distill", config=config).stdout
    layout = stages(workdir, config)
    vmap = f"{layout.data_dir}/vmap-50-10.txt"
    assert "pipeline.vmap" in dry and f"--vmap {vmap}" in dry  # conversion and export
    assert f"--backend ctranslate2 --ct2-model {layout.ct2_dir('teacher')}" in dry and " --vmap" in dry
    target = "results/default/eval/teacher/test.ct2-int8.json"
    run_snakefile(snakefile, workdir, target, "--allowed-rules", "model_files", "ct2_vmap", "ct2_convert", "evaluate_model_ct2",
                  config=config)
    lines = read_lines(workdir / vmap)
    source, targets = lines[0].split("\t")
    assert source == "" and len(targets.split()) == 50  # the always-allowed pieces
    assert (workdir / layout.ct2_dir("teacher") / ct2_dir.VMAP).is_file()
    result = json.loads((workdir / target).read_text())
    assert result["runtime"]["vocabulary_shortlist"] is True
    assert len(read_lines(workdir / result["beam"]["hypotheses"])) == result["sentences"]


# ------------------------------------------------------------------------------------------------
# Distillation with backend ctranslate2 (turns on once pipeline.distill.decode_shard has --backend)


def distill_supports_backend() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pipeline.distill.decode_shard", "--help"], text=True,
                          capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    return proc.returncode == 0 and "--backend" in proc.stdout


DISTILL_RULES = ["ct2_convert", "distill_shard_index", "distill_decode_shard", "distill_postprocess", "distill_merge",
                 "distill_binarize", "distill"]
SETTINGS_RULES = ["stage_settings"]  # the distillation's settings.json (part of the target distill)
DISTILL_CONFIG = {
    "resources": {"distill": {"threads": 1, "gpus": 0}},
    "distill": {
        "max_len_a": 1.0,
        "max_len_b": 2,
        "filters": {"min_length_ratio": 0.0, "max_length_ratio": 100.0, "max_repeat": 1000},
    },
}


@pytest.mark.slow
@pytest.mark.skipif(not distill_supports_backend(), reason="pipeline.distill.decode_shard has no --backend yet")
def test_distillation_with_ctranslate2_yields_the_same_pairs_in_the_same_order(smoke_data, tiny_teacher, tmp_path):
    snakefile = snakefile_with_ct2(tmp_path)
    runs = {}
    for backend in ("fairseq", "ctranslate2"):
        workdir = workdir_with_teacher(smoke_data, tiny_teacher, tmp_path / backend)
        config = write_config(workdir, {**DISTILL_CONFIG, "distill": {**DISTILL_CONFIG["distill"], "backend": backend}})
        run_snakefile(snakefile, workdir, "distill", "--allowed-rules", *DISTILL_RULES, *SETTINGS_RULES, config=config)
        runs[backend] = workdir
    fs, c2 = runs["fairseq"], runs["ctranslate2"]
    assert (c2 / stages(c2).ct2_dir("teacher") / "model.bin").is_file() and not (fs / "work/ct2").exists()
    dist = {backend: distill_dir(workdir) for backend, workdir in runs.items()}
    assert dist["fairseq"].name != dist["ctranslate2"].name  # keyed by the backend's settings
    ids = read_lines(data_dir(fs) / "clean/train.ids")
    for rel in ("train.ids", "train.de"):
        assert read_lines(dist["ctranslate2"] / rel) == read_lines(dist["fairseq"] / rel), rel
    assert read_lines(dist["ctranslate2"] / "train.ids") == ids
    assert len(read_lines(dist["ctranslate2"] / "train.en")) == len(read_lines(dist["fairseq"] / "train.en")) == len(ids)
    shards = sorted(p.name for p in (dist["fairseq"] / "shards").iterdir())
    assert sorted(p.name for p in (dist["ctranslate2"] / "shards").iterdir()) == shards
    for name in shards:
        a = [json.loads(line) for line in read_lines(dist["fairseq"] / "shards" / name)]
        b = [json.loads(line) for line in read_lines(dist["ctranslate2"] / "shards" / name)]
        assert [r["id"] for r in b] == [r["id"] for r in a]
        assert [len(r["hyps"]) for r in b] == [len(r["hyps"]) for r in a]
    stats = {k: json.loads((d / "stats.json").read_text()) for k, d in dist.items()}
    assert stats["ctranslate2"]["pairs_out"] == stats["fairseq"]["pairs_out"] == len(ids)
