"""Cached teacher distributions (pipeline.kdcache) and the word_kd criterion reading them: exact, guarded, resumable."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_dir, model_dir, snakemake, stages, write_config
from fairseq import checkpoint_utils, models

from fairseq_plugins.criterions.word_kd import WordKDCriterion, teacher_distribution
from pipeline.kdcache import store

REPO = Path(__file__).resolve().parent.parent
SHARDS, TOPK = 3, 8


def kdcache_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "pipeline.kdcache", *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


def build_args(teacher, data, cache, topk=TOPK, shards=SHARDS) -> list[str]:
    """teacher: a checkpoint, or a list of them (an ensemble)."""
    teachers = teacher if isinstance(teacher, list) else [teacher]
    return ["--teacher", *map(str, teachers), "--data", str(data), "--cache", str(cache), "--num-shards", str(shards),
            "--topk", str(topk), "--max-tokens", "1500"]


@pytest.fixture(scope="module")
def bin_dir(smoke_data) -> Path:
    return data_dir(smoke_data) / "bin"


@pytest.fixture(scope="module")
def cache_dir(bin_dir, tiny_teacher, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("kdcache") / "reference"
    kdcache_cli("build", *build_args(tiny_teacher, bin_dir, cache))
    return cache


@pytest.fixture(scope="module")
def setup(tiny_teacher):
    """(task with train and valid loaded, the teacher in eval mode, a fresh tiny student in eval mode)."""
    (teacher,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_teacher)])
    task.load_dataset("train")
    task.load_dataset("valid")
    torch.manual_seed(3)
    student = models.build_model(cfg.model, task).eval()  # no dropout: every criterion sees the same logits
    return task, teacher.eval(), student


def batch(task, split, seed=1):
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=1200, seed=seed)
    return next(itr.next_epoch_itr(shuffle=True))


def criterion(task, teacher_path, **kwargs) -> WordKDCriterion:
    kwargs = {"kd_alpha": 0.3, "kd_temperature": 2.0, "kd_topk": TOPK, "label_smoothing": 0.1, **kwargs}
    return WordKDCriterion(task, sentence_avg=False, teacher_path=str(teacher_path), **kwargs)


def loss_and_grads(crit, student, sample):
    student.zero_grad()
    loss, sample_size, log = crit(student, sample)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
    return loss.detach(), log, grads


# ---------------------------------------------------------------------------------------------
# The stage and its format


def test_cache_holds_the_teachers_top_k_per_target_token(cache_dir, setup):
    task, teacher, _ = setup
    index = json.loads((cache_dir / "cache.json").read_text())
    assert index["topk"] == TOPK and index["vocab"] == len(task.target_dictionary) and index["shards"] == SHARDS
    for split in ("train", "valid"):
        ds = task.dataset(split)
        assert index["splits"][split]["sentences"] == len(ds)
        assert index["splits"][split]["tokens"] == int(ds.tgt_sizes.sum())  # every target token, EOS included
        for i in range(SHARDS):
            shard = store.read_shard(store.shard_path(cache_dir, split, i, SHARDS))
            assert shard.index.dtype == np.int16 and shard.logprob.dtype == np.float16  # vocabulary 1000 fits int16
            assert (shard.start, shard.end) == (i * len(ds) // SHARDS, (i + 1) * len(ds) // SHARDS)
    reader = store.TeacherCache(cache_dir)
    sample = batch(task, "train")
    with torch.no_grad():
        logits = teacher(**sample["net_input"])[0]
    lprobs = torch.log_softmax(logits, -1)
    ids, logprob, lengths = reader.lookup("train", sample["id"].numpy(), TOPK)
    keep = sample["target"].ne(task.target_dictionary.pad())
    assert lengths.tolist() == keep.sum(1).tolist()
    expected_lp, expected_ids = lprobs[keep].topk(TOPK, -1)  # sorted, like the cache
    assert np.array_equal(ids, expected_ids.numpy())
    # float16 storage: each value within half a unit in the last place (relative 2^-11)
    torch.testing.assert_close(torch.from_numpy(logprob).float(), expected_lp, rtol=2**-11, atol=2**-24)
    assert np.all(np.diff(logprob.astype(np.float32), axis=1) <= 0)  # decreasing per row: any K' <= K is a prefix


# ---------------------------------------------------------------------------------------------
# Exactness against the online --kd-topk path


@pytest.mark.parametrize(("alpha", "temperature", "topk"), [(0.3, 2.0, TOPK), (0.0, 1.0, TOPK), (0.5, 1.0, 3)])
def test_cached_loss_and_gradient_equal_the_online_topk_path(cache_dir, setup, tiny_teacher, alpha, temperature, topk):
    task, teacher, student = setup
    student = copy.deepcopy(student)
    sample = batch(task, "train", seed=alpha * 10 + temperature)
    kwargs = {"kd_alpha": alpha, "kd_temperature": temperature, "kd_topk": topk}
    cached = criterion(task, tiny_teacher, kd_teacher_cache=str(cache_dir), **kwargs)
    assert cached.teachers == []  # no teacher loaded
    online = criterion(task, tiny_teacher, **kwargs)
    c_loss, c_log, c_grad = loss_and_grads(cached, student, sample)
    o_loss, o_log, o_grad = loss_and_grads(online, student, sample)

    # 1. The code path is exact: the online path fed the teacher's log-probabilities with the stored
    #    float16 values as its top-K gives the cached loss and gradient to float32 precision.
    keep = sample["target"].ne(task.target_dictionary.pad()).view(-1)
    with torch.no_grad():
        logits = teacher(**sample["net_input"])[0].reshape(-1, len(task.target_dictionary))
        lprobs = torch.log_softmax(logits, -1)
        top = lprobs.topk(TOPK, -1)
        ids, stored, _ = store.TeacherCache(cache_dir).lookup("train", sample["id"].numpy(), TOPK)
        assert torch.equal(torch.from_numpy(ids), top.indices[keep])  # the same tokens, in the same order
        # (the other entries far below: a value rounded down must not let the K+1-th token in)
        rounded = torch.full_like(lprobs, -1e4)
        chosen, values = torch.from_numpy(ids[:, :topk]), torch.from_numpy(stored[:, :topk]).float()
        rounded[keep] = rounded[keep].scatter(1, chosen, values)
    online.teacher_forward = lambda model, smp: teacher_distribution([rounded.clone()], temperature, topk)
    r_loss, r_log, r_grad = loss_and_grads(online, student, sample)
    torch.testing.assert_close(c_loss, r_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(c_log["kl_loss"], r_log["kl_loss"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(c_grad, r_grad, rtol=1e-5, atol=1e-7)

    # 2. Against the real online path the only difference is float16 storage. Per token, rounding the
    #    stored log-probabilities a_k by e_k (|e_k| <= d = max_k |a_k| 2^-11) moves the renormalised
    #    log-probabilities log p_k by (e_k - sum_j p_j e_j) / T, at most 2d / T, and the KL by at most
    #    (2d / T) sum_k p_k |log p_k - log q_k| to first order (the sum of dp_k is 0); the loss weighs
    #    the KL by (1 - alpha) T^2. The test allows twice that bound (second order, float32 sums).
    with torch.no_grad():
        a = top.values[keep][:, :topk]
        d = a.abs().amax(-1) * 2**-11
        logp = torch.log_softmax(a / temperature, -1)
        s_logits = student(**sample["net_input"])[0].reshape(-1, logits.size(-1))[keep]
        logq = torch.log_softmax(s_logits / temperature, -1).gather(1, top.indices[keep][:, :topk])
        bound = ((2 * d / temperature) * (logp.exp() * (logp - logq).abs()).sum(-1)).sum()
    kl_diff = (c_log["kl_loss"] - o_log["kl_loss"]).abs()
    assert kl_diff <= 2 * bound + 1e-5, (kl_diff, bound)
    assert (c_loss - o_loss).abs() <= (1 - alpha) * temperature**2 * 2 * bound + 1e-5
    torch.testing.assert_close(c_log["nll_loss"], o_log["nll_loss"])  # the CE part does not involve the teacher
    # the gradient's KD part per token is (1 - alpha) T (q - p) on the kept tokens; p moves by at most
    # p_k 2d / T: relative to the whole gradient a change of the order of 2 max(d) (here < 1e-2)
    rel = (c_grad - o_grad).norm() / o_grad.norm()
    assert rel <= 2 * float(d.max()), (rel, d.max())


def test_validation_reads_the_valid_split(cache_dir, setup, tiny_teacher):
    task, _, student = setup
    sample = batch(task, "valid")
    cached = criterion(task, tiny_teacher, kd_teacher_cache=str(cache_dir)).eval()  # eval mode: the valid split
    online = criterion(task, tiny_teacher).eval()
    with torch.no_grad():
        c_log, o_log = cached(student, sample)[2], online(student, sample)[2]
    torch.testing.assert_close(c_log["kl_loss"], o_log["kl_loss"], rtol=2e-3, atol=1e-3)
    cached.train()  # the same ids read from the train split: other sentences, other lengths: refused
    with pytest.raises(ValueError, match="does not match the batch: split 'train' sentence"):
        cached(student, sample)


@pytest.fixture(scope="module")
def second_member(tiny_teacher, tmp_path_factory) -> Path:
    """Another teacher for an ensemble: the tiny teacher's weights moved by noise (other distributions)."""
    state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(7)
    for name, weight in state["model"].items():
        if weight.is_floating_point():
            state["model"][name] = weight + 0.2 * weight.std().nan_to_num(1.0) * torch.randn(
                weight.shape, generator=generator)
    path = tmp_path_factory.mktemp("member") / "member_2.pt"
    torch.save(state, path)
    return path


def test_ensemble_cache_is_the_online_ensemble_at_t1(setup, tiny_teacher, second_member, bin_dir, tmp_path):
    """An ensemble's cache: the top-K of the members' average probability, which the online ensemble's
    top-K path uses at T = 1; its loss and gradient equal the online path's up to float16 storage."""
    task, teacher, student = setup
    (member,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(second_member)], task=task)
    member.eval()
    cache = tmp_path / "ensemble"
    kdcache_cli("build", *build_args([tiny_teacher, second_member], bin_dir, cache, shards=1))
    identity = json.loads((cache / "cache.json").read_text())["splits"]["train"]["identity"]["teacher"]
    assert [m["path"] for m in identity["members"]] == [str(Path(p).resolve()) for p in (tiny_teacher, second_member)]

    sample = batch(task, "train", seed=5)
    keep = sample["target"].ne(task.target_dictionary.pad()).view(-1)
    with torch.no_grad():
        lp = [torch.log_softmax(m(**sample["net_input"])[0], -1).reshape(-1, len(task.target_dictionary))[keep]
              for m in (teacher, member)]
        average = torch.logsumexp(torch.stack(lp), 0) - np.log(2)
    assert not torch.allclose(lp[0], lp[1], atol=1e-2)  # two different teachers
    ids, stored, _ = store.TeacherCache(cache).lookup("train", sample["id"].numpy(), TOPK)
    top = average.topk(TOPK, -1)
    assert torch.equal(torch.from_numpy(ids).long(), top.indices)
    torch.testing.assert_close(torch.from_numpy(stored).float(), top.values, rtol=2**-11, atol=2**-24)

    members = f"{tiny_teacher}:{second_member}"
    kwargs = {"kd_alpha": 0.3, "kd_temperature": 1.0, "kd_topk": TOPK}
    cached = criterion(task, members, kd_teacher_cache=str(cache), **kwargs)
    online = criterion(task, members, **kwargs)
    assert cached.teachers == [] and len(online.teachers) == 2
    student = copy.deepcopy(student)
    c_loss, c_log, c_grad = loss_and_grads(cached, student, sample)
    o_loss, o_log, o_grad = loss_and_grads(online, student, sample)
    # float16 storage only (the bound of test_cached_loss_and_gradient_equal_the_online_topk_path, T = 1)
    with torch.no_grad():
        d = top.values.abs().amax(-1) * 2**-11
        logp = torch.log_softmax(top.values, -1)
        s_logits = student(**sample["net_input"])[0].reshape(-1, len(task.target_dictionary))[keep]
        logq = torch.log_softmax(s_logits, -1).gather(1, top.indices)
        bound = ((2 * d) * (logp.exp() * (logp - logq).abs()).sum(-1)).sum()
    assert (c_log["kl_loss"] - o_log["kl_loss"]).abs() <= 2 * bound + 1e-5, (c_log["kl_loss"], o_log["kl_loss"], bound)
    assert (c_loss - o_loss).abs() <= 0.7 * 2 * bound + 1e-5
    assert (c_grad - o_grad).norm() / o_grad.norm() <= 2 * float(d.max())
    # the single teacher's cache is no ensemble's
    with pytest.raises(store.StaleCacheError, match="teacher checkpoint"):
        criterion(task, str(tiny_teacher), kd_teacher_cache=str(cache), **kwargs)


# ---------------------------------------------------------------------------------------------
# The guard: a stale or foreign cache is refused, naming what differs


def test_unsuitable_options_are_refused(cache_dir, setup, tiny_teacher):
    task, _, _ = setup
    with pytest.raises(ValueError, match="set --kd-topk K > 0"):
        criterion(task, tiny_teacher, kd_topk=0, kd_teacher_cache=str(cache_dir))
    with pytest.raises(ValueError, match=f"--kd-topk {TOPK + 1} exceeds the top-{TOPK} stored"):
        criterion(task, tiny_teacher, kd_topk=TOPK + 1, kd_teacher_cache=str(cache_dir))
    with pytest.raises(ValueError, match="an ensemble's teacher cache holds its members' average at T = 1; "
                                         "--kd-temperature 2 with 2 teachers runs online"):
        criterion(task, f"{tiny_teacher}:{tiny_teacher}", kd_teacher_cache=str(cache_dir))  # (T = 2)
    with pytest.raises(store.StaleCacheError, match=r"teacher checkpoint the ensemble .* is not the one the cache"):
        criterion(task, f"{tiny_teacher}:{tiny_teacher}", kd_temperature=1.0, kd_teacher_cache=str(cache_dir))
    with pytest.raises(store.StaleCacheError, match="no cache.json"):
        criterion(task, tiny_teacher, kd_teacher_cache=str(cache_dir / "train"))


def test_stale_or_foreign_cache_is_refused_naming_what_differs(cache_dir, setup, tiny_teacher, bin_dir, tmp_path):
    task, _, _ = setup
    # another teacher: same model, one more key in the checkpoint
    state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    state["extra_state"]["note"] = "retrained"
    other_teacher = tmp_path / "other_teacher.pt"
    torch.save(state, other_teacher)
    with pytest.raises(store.StaleCacheError) as err:
        criterion(task, other_teacher, kd_teacher_cache=str(cache_dir))
    message = str(err.value)
    assert f"teacher checkpoint {other_teacher}" in message and str(Path(tiny_teacher).resolve()) in message
    assert str(cache_dir) in message and "training data" not in message

    # other training targets and another dictionary file (same symbols, other counts), in a copy of the data
    data = tmp_path / "bin"
    shutil.copytree(bin_dir, data)
    target_bin = next(data.glob("train.*.en.bin"))
    tokens = bytearray(target_bin.read_bytes())
    tokens[10] ^= 1
    target_bin.write_bytes(bytes(tokens))
    lines = (data / "dict.en.txt").read_text().splitlines(keepends=True)
    word, count = lines[5].split()
    lines[5] = f"{word} {int(count) + 1}\n"
    (data / "dict.en.txt").write_text("".join(lines))
    reader = store.TeacherCache(cache_dir)
    with pytest.raises(store.StaleCacheError) as err:
        reader.check(tiny_teacher, data)
    message = str(err.value)
    assert f"train: training data file {target_bin.name}" in message and "dictionary dict.en.txt" in message
    assert "dict.de.txt" not in message and "teacher checkpoint" not in message and "valid.de-en.en.bin" not in message

    # the rule-level guard: the index step refuses shards made for another teacher
    proc = kdcache_cli("index", "--teacher", str(other_teacher), "--data", str(bin_dir), "--cache", str(cache_dir),
                       "--num-shards", str(SHARDS), check=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert f"teacher checkpoint {other_teacher}" in proc.stdout and "shard000-of-003" in proc.stdout
    assert "Traceback" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# A killed run redoes only the unfinished shards


def test_killed_build_redoes_only_unfinished_shards(cache_dir, tiny_teacher, bin_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    (cache / "cache.json").unlink()  # a run killed before its index
    lost = store.shard_path(cache, "train", 1, SHARDS)
    shutil.rmtree(lost)  # shard 1 never finished ...
    partial = lost.parent / f".{lost.name}.x1y2"  # ... and left its temporary directory behind
    partial.mkdir()
    (partial / "index.npy").write_bytes(b"half")
    before = {p: p.stat().st_ino for p in cache.glob("*/shard*/logprob.npy")}
    assert len(before) == 2 * SHARDS - 1
    proc = kdcache_cli("build", *build_args(tiny_teacher, bin_dir, cache))
    assert proc.stdout.count("kept") == 2 * SHARDS - 1, proc.stdout[-3000:]
    assert proc.stdout.count("tokens/s") == 1  # one shard computed
    assert {p: p.stat().st_ino for p in before} == before  # finished shards untouched
    assert not partial.exists()
    for name in ("index.npy", "logprob.npy", "offsets.npy"):
        assert np.array_equal(np.load(lost / name), np.load(store.shard_path(cache_dir, "train", 1, SHARDS) / name))
    assert json.loads((cache / "cache.json").read_text())["splits"] == json.loads((cache_dir / "cache.json").read_text())["splits"]

    # a shard made with another K is redone, not kept
    proc = kdcache_cli("build", *build_args(tiny_teacher, bin_dir, cache, topk=4))
    assert proc.stdout.count("redone (topk 8, expected 4)") == 2 * SHARDS and "kept" not in proc.stdout
    assert store.TeacherCache(cache).topk == 4


# ---------------------------------------------------------------------------------------------
# The rules: one job per shard and split, the index, and the students' training reading the cache


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2)) for m in (re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line) for line in table.splitlines())
            if m and m.group(1) != "total"}


def train_commands(output: str) -> dict[str, str]:
    return {m.group(1): line for line in output.splitlines()
            if "pipeline.train" in line and (m := re.search(r"--output work/models/(\S+)-[0-9a-f]{8}/model\.pt", line))}


def test_dry_run_plans_the_caches_and_passes_them_to_the_word_kd_students(tmp_path):
    proc = snakemake(tmp_path / "on", "-n", "-p", "students", config=write_config(tmp_path / "on"))
    counts = job_counts(proc.stdout)
    shards = 2  # config.yaml students.kd_cache_shards
    assert counts["kdcache_shard"] == 2 * 2 * shards and counts["kdcache_index"] == 2, counts  # 2 caches x train, valid
    commands = train_commands(proc.stdout)
    layout = stages(tmp_path / "on")
    student = layout.model_dir("student_word_kd_a0.5_t1")
    assert commands["student_word_kd_a0.5_t1"].endswith(f"--kd-topk 8 --kd-teacher-cache {layout.kdcache_dir('reference')} "
                                                         f"--tensorboard-logdir {student}/tb "
                                                         f">> logs/train/{student.rsplit('/', 1)[1]}.log 2>&1")
    assert f"--kd-teacher-cache {layout.kdcache_dir('distilled')}" in commands["student_seq_word_kd_a0.5_t1"]
    assert "--kd-teacher-cache" not in commands["student_baseline"] + commands["student_seq_kd"]
    shard_jobs = [line for line in proc.stdout.splitlines() if "pipeline.kdcache shard" in line]
    assert len(shard_jobs) == 8 and all("--topk 8" in line and "--num-shards 2" in line for line in shard_jobs)

    off = {"students": {"kd_cache": False, "kd_topk": 0}}
    proc = snakemake(tmp_path / "off", "-n", "-p", "students", config=write_config(tmp_path / "off", off))
    assert "kdcache_shard" not in job_counts(proc.stdout) and "--kd-teacher-cache" not in proc.stdout
    assert "--kd-topk 0" in train_commands(proc.stdout)["student_word_kd_a0.5_t1"]

    bad = tmp_path / "bad"
    proc = snakemake(bad, "-n", "students", config=write_config(bad, {"students": {"kd_topk": 0}}), check=False)
    assert proc.returncode != 0 and "ConfigError" in proc.stdout
    assert "config students.kd_cache: true needs students.kd_topk > 0" in proc.stdout
    assert not (bad / "work").exists()
    # no word-KD student: kd_topk 0 with the cache on is no error
    snakemake(bad, "-n", "students", config=write_config(bad, {"students": {"kd_topk": 0, "variants": ["baseline"]}}))


def test_snakefile_builds_the_cache_and_a_killed_shard_job_is_redone_alone(smoke_data, tiny_teacher, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(smoke_data / "work" / "data", work / "work" / "data")  # (mtimes kept: the data is not redone)
    config = write_config(work)
    teacher = model_dir(work, "teacher", config) / "model.pt"
    teacher.parent.mkdir(parents=True)
    shutil.copy(tiny_teacher, teacher)
    target = stages(work, config).kdcache_dir("reference") + "/cache.json"
    proc = snakemake(work, target, config=config)
    assert job_counts(proc.stdout) == {"kdcache_shard": 4, "kdcache_index": 1}, proc.stdout[-3000:]
    cache = work / target.removesuffix("/cache.json")
    reader = store.TeacherCache(cache)
    assert reader.topk == 8 and reader.shards == 2 and set(reader.splits) == {"train", "valid"}
    reader.check(teacher, data_dir(work, config) / "bin")

    # a shard job killed mid-way (so the index never ran): Snakemake removes the job's output, its
    # temporary directory may stay
    (cache / "cache.json").unlink()
    lost = store.shard_path(cache, "valid", 1, 2)
    shutil.rmtree(lost)
    (lost.parent / f".{lost.name}.abc123").mkdir()
    kept = {p: p.stat().st_ino for p in cache.glob("*/shard*/index.npy")}
    proc = snakemake(work, target, config=config)
    assert job_counts(proc.stdout) == {"kdcache_shard": 1, "kdcache_index": 1}, proc.stdout[-3000:]
    assert {p: p.stat().st_ino for p in kept} == kept
    assert lost.is_dir() and not list(lost.parent.glob(".*"))


def test_fairseq_train_and_validate_with_the_cache(cache_dir, bin_dir, tiny_teacher, tmp_path):
    """fairseq-train --kd-teacher-cache: train steps read the train split, validation the valid split."""
    from test_word_kd import fairseq_cli, kd_train_args, logged

    args = kd_train_args(bin_dir, tmp_path / "student", tiny_teacher, max_update=6)
    args = [a for a in args if a != "--disable-validation"]
    args[args.index("--kd-topk") + 1] = str(TOPK)
    log = fairseq_cli("fairseq_cli.train", *args, "--kd-teacher-cache", str(cache_dir), cwd=tmp_path)
    assert "not loaded" in log and len(logged(log, "kl_loss")) == 2, log[-3000:]
    assert re.search(r"valid on 'valid' subset .*kl_loss", log), log[-3000:]
