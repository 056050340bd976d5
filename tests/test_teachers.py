"""Teachers the run does not train itself, and ensembles: an existing fairseq teacher (teacher.checkpoints), a
text-to-text CTranslate2 teacher (teacher.ct2_model), teacher.ensemble; the checks before any job runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import REPO, data_dir, distill_dir, snakemake, stages, train_tiny, write_config

TINY_STUDENTS = {"preset": "tiny", "train": {"max_epoch": 0, "max_update": 4, "average_last": 0,
                                             "validate_interval_updates": 0, "save_interval_updates": 0}}
FAIRSEQ_ONLY = {"backends": ["fairseq"], "speed_runs": 1}


def jobs_in_dry_run(output: str) -> dict[str, int]:
    """Snakemake's own job-count table of a dry run: rule -> count."""
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=REPO)


def refused(workdir: Path, overrides: dict, *messages: str) -> None:
    """A dry run that stops at the config check with each message, before any job (no work/, no logs/)."""
    proc = snakemake(workdir, "-n", config=write_config(workdir, overrides), check=False)
    assert proc.returncode != 0, proc.stdout[-3000:]
    for message in messages:
        assert message in proc.stdout, proc.stdout[-3000:]
    assert not (workdir / "work").exists() and not (workdir / "logs").exists()


@pytest.fixture(scope="module")
def second_teacher(smoke_data: Path, tmp_path_factory) -> Path:
    """Another tiny teacher on the same data, another seed: an ensemble member."""
    return train_tiny(data_dir(smoke_data) / "bin", tmp_path_factory.mktemp("tiny_teacher_2"), extra=["--seed", "2"])


# ---------------------------------------------------------------------------------------------------
# An existing fairseq teacher


def test_external_teacher_replaces_training_and_evaluates_like_our_own(smoke_data, tiny_teacher, tmp_path):
    smoke = data_dir(smoke_data)
    spm_model = smoke / "spm/spm.model"
    cfg = write_config(tmp_path, {"teacher": {"checkpoints": [str(tiny_teacher)], "spm": str(spm_model)},
                                  "students": {**TINY_STUDENTS, "variants": ["word_kd"]}, "evaluate": FAIRSEQ_ONLY})
    jobs = jobs_in_dry_run(snakemake(tmp_path, "-n", "all", config=cfg).stdout)
    assert jobs["import_teacher"] == 1 and jobs["teacher_spm"] == 1 and "spm_train" not in jobs
    assert jobs["train_model"] == 1  # the student alone
    student = "student_word_kd_a0.5_t1"
    layout = stages(tmp_path, cfg)
    snakemake(tmp_path, "results/default/eval/teacher/test.json", f"{layout.model_dir(student)}/model.pt", config=cfg)
    # the data stage used the teacher's SentencePiece model and dictionary
    data = tmp_path / layout.data_dir
    assert (data / "spm/spm.model").read_bytes() == spm_model.read_bytes()
    for lang in ("de", "en"):
        assert (data / f"bin/dict.{lang}.txt").read_text() == (smoke / "bin/dict.de.txt").read_text()
    student_log = tmp_path / f"logs/train/{layout.models[student].dir}.log"
    assert f"--teacher-path {layout.model_dir('teacher')}/model.pt" in student_log.read_text()
    # the same checkpoint evaluated in the data directory it was trained on gives the same translations and BLEU
    first = tmp_path / "first"
    proc = run_cli("pipeline.evaluate", "--model", str(tiny_teacher), "--name", "teacher", "--set", "test",
                   "--split", "test", "--data", str(smoke / "bin"), "--spm", str(spm_model),
                   "--ref", str(smoke / "raw/test.en"), "--json", str(first / "test.json"),
                   "--beam", "2", "--max-tokens", "2000", "--speed-runs", "1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    evals = tmp_path / "results/default/eval/teacher"
    ours, theirs = (json.loads(p.read_text()) for p in (evals / "test.json", first / "test.json"))
    for mode in ("beam", "greedy"):
        assert ours[mode]["bleu"]["score"] == theirs[mode]["bleu"]["score"]
    assert (evals / "test.beam.txt").read_text() == (first / "test.beam.txt").read_text()
    assert ours["spec"]["checkpoint"] == str(tiny_teacher.resolve())


def test_external_teacher_errors_before_any_job(smoke_data, tiny_teacher, tmp_path):
    spm_model = str(data_dir(smoke_data) / "spm/spm.model")
    missing = tmp_path / "nowhere/model.pt"
    refused(tmp_path / "missing", {"teacher": {"checkpoints": [str(missing)], "spm": spm_model}},
            "ModelError", f"config teacher.checkpoints: {missing}: no such checkpoint file")
    refused(tmp_path / "no_spm", {"teacher": {"checkpoints": [str(tiny_teacher)]}},
            f"config teacher.spm (not set, and {tiny_teacher.parent}/spm.model does not exist)")
    refused(tmp_path / "langs", {"src": "en", "tgt": "de", "teacher": {"checkpoints": [str(tiny_teacher)], "spm": spm_model}},
            f"config teacher.checkpoints: {tiny_teacher} translates de->en, but config src is 'en' (en->de)")
    # a second teacher whose own dictionary (beside it) differs from the first's
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny_teacher, other / "model.pt")
    lines = (data_dir(smoke_data) / "bin/dict.de.txt").read_text().splitlines()
    for lang in ("de", "en"):
        (other / f"dict.{lang}.txt").write_text("\n".join(lines[:-3]) + "\n")
    refused(tmp_path / "dicts", {"teacher": {"checkpoints": [str(tiny_teacher), str(other / "model.pt")], "spm": spm_model}},
            f"config teacher: the teachers' dictionaries differ: {data_dir(smoke_data) / 'bin/dict.de.txt'} and {other / 'dict.de.txt'}")
    # one checkpoint, a given dictionary that is not the checkpoint's (its embeddings say so)
    refused(tmp_path / "rows", {"teacher": {"checkpoints": [str(other / "model.pt")], "spm": spm_model}},
            f"config teacher.checkpoints: {other / 'model.pt'} has {len(lines) + 4} embeddings, but dictionary "
            f"{other / 'dict.de.txt'} gives {len(lines) + 1} symbols")
    refused(tmp_path / "both", {"teacher": {"checkpoints": [str(tiny_teacher)], "ct2_model": str(tmp_path)}},
            "config teacher.checkpoints and teacher.ct2_model: give one teacher, not both")


# ---------------------------------------------------------------------------------------------------
# A text-to-text CTranslate2 teacher


@pytest.fixture(scope="module")
def ct2_teacher(smoke_data, tiny_teacher, tmp_path_factory) -> Path:
    """The tiny teacher converted to CTranslate2, shipped as a foreign model: source.spm + target.spm, no pipeline.json."""
    out = tmp_path_factory.mktemp("ct2_teacher") / "model"
    proc = run_cli("pipeline.ct2", "convert", "--model", str(tiny_teacher), "--data", str(data_dir(smoke_data) / "bin"),
                   "--spm", str(data_dir(smoke_data) / "spm/spm.model"), "--out", str(out), "--quantization", "float32")
    assert proc.returncode == 0, proc.stdout[-3000:]
    (out / "spm.model").rename(out / "source.spm")
    shutil.copy(out / "source.spm", out / "target.spm")
    (out / "pipeline.json").unlink()
    return out


def test_ct2_teacher_distils_with_its_own_spm(smoke_data, ct2_teacher, tmp_path):
    cfg = write_config(tmp_path, {"teacher": {"ct2_model": str(ct2_teacher)}, "distill": {"backend": "ctranslate2"},
                                  "data": {"spm": {"vocab_size": 800}}, "students": {**TINY_STUDENTS, "variants": ["seq_kd"]}})
    jobs = jobs_in_dry_run(snakemake(tmp_path, "-n", "all", config=cfg).stdout)
    assert jobs["train_model"] == 1 and jobs["spm_train"] == 1 and "import_teacher" not in jobs  # the student alone
    snakemake(tmp_path, "distill", config=cfg)
    data, dist = data_dir(tmp_path, cfg), distill_dir(tmp_path, cfg)
    students = spm.SentencePieceProcessor(model_file=str(data / "spm/spm.model"))
    teacher = spm.SentencePieceProcessor(model_file=str(ct2_teacher / "source.spm"))
    assert students.get_piece_size() == 800 != teacher.get_piece_size()
    records = [json.loads(line) for line in (dist / "shards/shard000-of-003.jsonl").read_text().splitlines()]
    source = (data / "clean/train.de").read_text().splitlines()
    # the shard holds the teacher's output re-encoded with the students' pieces: the same text as the teacher's own
    from pipeline.decoding import SearchOptions, open_backend

    backend = open_backend(ct2_teacher, src="de", tgt="en", compute_type="int8", cpu=True)
    # the shard's lines with the shard job's search and batches (a batch's longest source caps its hypotheses)
    options = SearchOptions(beam=2, nbest=2, max_tokens=1000, batch_size=8)
    direct = backend.decode([" ".join(teacher.encode(line, out_type=str)) for line in source[:len(records)]], options)
    for record, hyps in zip(records, direct.hypotheses, strict=True):
        ours = [h["text"].split() for h in record["hyps"]]
        assert all(students.piece_to_id(p) != students.unk_id() for pieces in ours for p in pieces)
        assert [students.decode(p) for p in ours] == [teacher.decode(h.tokens.split()) for h in hyps]
    stats = json.loads((dist / "stats.json").read_text())
    assert stats["pairs_in"] == len(source)


def test_word_kd_with_a_ct2_teacher_is_refused(ct2_teacher, tmp_path):
    refused(tmp_path / "word_kd", {"teacher": {"ct2_model": str(ct2_teacher)}, "distill": {"backend": "ctranslate2"},
                                   "students": {"variants": ["seq_kd", "seq_word_kd"]}},
            "ConfigError", "config students.variants: student_seq_word_kd_a0.5_t1 need the teacher's token distributions, "
            f"but teacher.ct2_model {ct2_teacher} is a text-to-text teacher with its own vocabulary")
    refused(tmp_path / "backend", {"teacher": {"ct2_model": str(ct2_teacher)}, "students": {"variants": ["seq_kd"]}},
            "config distill.backend: fairseq, but teacher.ct2_model is a CTranslate2 model")
    refused(tmp_path / "missing", {"teacher": {"ct2_model": str(tmp_path / "none")}, "distill": {"backend": "ctranslate2"},
                                   "students": {"variants": ["seq_kd"]}},
            f"config teacher.ct2_model: {tmp_path / 'none'}: no such directory")


# ---------------------------------------------------------------------------------------------------
# Ensembles


def test_ensemble_of_two_plans_two_teachers_an_ensemble_distillation_and_students_with_both(smoke_data, tmp_path):
    # the decoding jobs are planned once the shard index (a checkpoint) exists: the smoke data, indexed for real
    for workdir in (tmp_path, tmp_path / "one"):
        shutil.copytree(smoke_data, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".snakemake"))
        index = data_dir(workdir, write_config(workdir)) / "distill_index-700.json"
        snakemake(workdir, str(index.relative_to(workdir)), config=write_config(workdir))
    cfg = write_config(tmp_path, {"teacher": {"ensemble": 2}})
    dry = snakemake(tmp_path, "-n", "-p", "all", config=cfg).stdout
    jobs = jobs_in_dry_run(dry)
    assert jobs["train_model"] == 6  # teacher, teacher_2 and the four students
    layout = stages(tmp_path, cfg)
    members = f"{layout.model_dir('teacher')}/model.pt:{layout.model_dir('teacher_2')}/model.pt"
    assert set(re.findall(r"--seed (\d+) .*--tensorboard-logdir work/models/(teacher\S*)-[0-9a-f]{8}/tb", dry)) == {
        ("1", "teacher"), ("2", "teacher_2")}
    assert dry.count(f"pipeline.distill.decode_shard --model {members} ") == jobs["distill_decode_shard"] == 3
    assert dry.count(f"--teacher-path {members} ") == 2  # word_kd and seq_word_kd
    # (T = 1) both read the ensemble's teacher cache: every member runs in the cache jobs
    assert jobs["kdcache_shard"] == 8 and jobs["kdcache_index"] == 2
    assert dry.count(f"pipeline.kdcache shard --teacher {members.replace(':', ' ')} ") == 8
    assert dry.count("--kd-teacher-cache") == 2
    assert f"pipeline.evaluate --model {members} --name teacher_ensemble" in dry
    assert jobs["evaluate_model"] == 7 and jobs["evaluate_model_ct2"] == 6  # no CTranslate2 ensemble
    refused(tmp_path / "ct2", {"teacher": {"ensemble": 2}, "distill": {"backend": "ctranslate2"}},
            "config distill.backend: ctranslate2 cannot decode an ensemble (2 teachers: teacher, teacher_2)")
    # one teacher: today's names and paths, no ensemble entry
    single = snakemake(tmp_path / "one", "-n", "-p", "all", config=write_config(tmp_path / "one")).stdout
    assert "teacher_2" not in single and "teacher_ensemble" not in single
    one = stages(tmp_path / "one")
    assert one.model_dir("teacher") == layout.model_dir("teacher")  # the first member is the single teacher
    assert f"decode_shard --model {one.model_dir('teacher')}/model.pt --data {one.data_dir}/bin " in single


def test_ensemble_decodes_through_decode_shard_and_evaluate(smoke_data, tiny_teacher, second_teacher, tmp_path):
    smoke = data_dir(smoke_data)
    data = smoke / "bin"
    first_six = {}  # the first six training pairs, indexed as one shard (pipeline.distill.shard_index)
    for role, path in (("ids", "clean/train.ids"), ("src-spm", "spm/train.de"), ("ref-spm", "spm/train.en"),
                       ("src-text", "clean/train.de"), ("ref-text", "clean/train.en")):
        first_six[role] = tmp_path / role
        first_six[role].write_text("".join((smoke / path).read_text().splitlines(True)[:6]))
    index = tmp_path / "index.json"
    proc = run_cli("pipeline.distill.shard_index", "--shard-size", "6", "--out", str(index),
                   *[arg for role, path in first_six.items() for arg in (f"--{role}", str(path))])
    assert proc.returncode == 0, proc.stdout[-3000:]

    def decode(model: str, name: str) -> tuple[list[dict], str]:
        out = tmp_path / name / "shard000-of-001.jsonl"
        proc = run_cli("pipeline.distill.decode_shard", "--model", model, "--data", str(data), "--index", str(index),
                       "--shard", "0", "--num-shards", "1", "--beam", "2", "--nbest", "2", "--cpu", "--out", str(out))
        assert proc.returncode == 0, proc.stdout[-3000:]
        return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout

    single, _ = decode(str(tiny_teacher), "single")
    itself, log = decode(f"{tiny_teacher}:{tiny_teacher}", "itself")
    both, log = decode(f"{tiny_teacher}:{second_teacher}", "both")
    assert "ensemble of 2 models" in log
    # an ensemble of a model with itself averages equal probabilities: the model's own n-best lists
    assert [[h["text"] for h in r["hyps"]] for r in itself] == [[h["text"] for h in r["hyps"]] for r in single]
    assert [h["score"] for r in itself for h in r["hyps"]] == pytest.approx([h["score"] for r in single for h in r["hyps"]], abs=1e-4)
    assert [h["score"] for r in both for h in r["hyps"]] != pytest.approx([h["score"] for r in single for h in r["hyps"]], abs=1e-4)
    # the evaluation of an ensemble: one entry, its size the members' sum
    result = tmp_path / "eval.json"
    proc = run_cli("pipeline.evaluate", "--model", f"{tiny_teacher}:{second_teacher}", "--name", "teacher_ensemble", "--set", "test",
                   "--split", "test", "--data", str(data), "--spm", str(smoke / "spm/spm.model"),
                   "--ref", str(smoke / "raw/test.en"), "--json", str(result), "--beam", "2", "--speed-runs", "1",
                   "--cpu")
    assert proc.returncode == 0, proc.stdout[-3000:]
    size = json.loads(result.read_text())["model_size"]
    assert size["parameters"] == sum(member["parameters"] for member in size["members"]) and len(size["members"]) == 2
