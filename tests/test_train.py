"""Teacher training through the real rule: resumable after a kill, checkpoint choice and averaging."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SNAKEMAKE, data_dir, model_dir, snakemake, write_config

from pipeline import checkpoints
from pipeline.errors import ConfigError
from pipeline.models import extra_args, fairseq_train_args, model_specs
from pipeline.train import ALLOCATOR_ENV, train_env, trained_to_the_end


@pytest.fixture()
def workdir(smoke_data: Path, tmp_path: Path) -> Path:
    work = tmp_path / "run"
    shutil.copytree(smoke_data, work, ignore=shutil.ignore_patterns(".snakemake", "test_config.yaml"))
    return work


def test_kill_then_resume_continues_from_saved_updates(workdir: Path):
    cfg = write_config(workdir, {"train": {"max_update": 200, "save_interval_updates": 20,
                                           "validate_interval_updates": 20, "log_interval": 10}})
    cmd = [*SNAKEMAKE, "teacher", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    teacher = model_dir(workdir, "teacher", cfg)
    last = teacher / "checkpoints/checkpoint_last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert last.exists(), "training wrote no checkpoint"
    time.sleep(1.0)  # let the save finish
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert not (teacher / "model.pt").exists(), "the kill must interrupt training"
    saved = checkpoints.num_updates(checkpoints.load(last))
    assert 20 <= saved < 200

    snakemake(workdir, "teacher", config=cfg)
    log = (workdir / f"logs/train/{teacher.name}.log").read_text()
    assert f"resuming from {teacher.relative_to(workdir)}/checkpoints/checkpoint_last.pt at update {saved}" in log
    assert f"@ {saved} updates" in log  # fairseq's own "Loaded checkpoint ... (epoch E @ N updates)"
    final = checkpoints.load(teacher / "model.pt")
    assert checkpoints.num_updates(final) == 200
    # stripped: no optimizer state, no training criterion
    assert "last_optimizer_state" not in final and final["cfg"]["criterion"] is None


def _processes(pattern: str, cwd: Path) -> dict[int, int]:
    """pid -> parent pid of the live processes in cwd whose command line contains pattern."""
    import psutil

    found = {}
    for p in psutil.process_iter(["cmdline", "ppid", "cwd", "status"]):
        if (pattern in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(cwd)
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            found[p.pid] = p.info["ppid"]
    return found


def test_fairseq_train_dies_with_its_killed_runner(workdir: Path):
    """SIGKILL to pipeline.train alone (not its process group, as a kill by hand or an OOM kill does): the
    fairseq-train it started stops too, instead of training on beside the job's rerun."""
    cfg = write_config(workdir, {"train": {"max_update": 2000}})
    proc = subprocess.Popen([*SNAKEMAKE, "teacher", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                             "--cores", "2", "--configfile", str(cfg)], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.time() + 300
        while not (runner := _processes("-m pipeline.train", workdir)) or not (
                trainer := [pid for pid, parent in _processes("-m fairseq_cli.train", workdir).items() if parent in runner]):
            assert proc.poll() is None and time.time() < deadline, "no fairseq-train started"
            time.sleep(0.5)
        (fairseq_pid,) = trainer
        parent = _processes("-m fairseq_cli.train", workdir)[fairseq_pid]
        assert parent in runner  # pipeline.train itself (the job's shell matches the pattern too)
        os.kill(parent, signal.SIGKILL)
        deadline = time.time() + 60
        while fairseq_pid in _processes("-m fairseq_cli.train", workdir):
            assert time.time() < deadline, "fairseq-train still runs a minute after its runner was killed"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_averaging_last_checkpoints(workdir: Path):
    cfg = write_config(workdir, {"train": {"max_update": 60, "save_interval_updates": 20, "average_last": 3}})
    snakemake(workdir, "teacher", config=cfg)
    teacher = model_dir(workdir, "teacher", cfg)
    save_dir = teacher / "checkpoints"
    paths = checkpoints.latest_checkpoints(save_dir, 3)
    assert [p.name for p in paths] == ["checkpoint_1_20.pt", "checkpoint_2_40.pt", "checkpoint_2_60.pt"]
    model = checkpoints.load(teacher / "model.pt")
    assert model["extra_state"]["averaged_from"] == [p.name for p in paths]
    states = [checkpoints.load(p)["model"] for p in paths]
    key = "encoder.layers.0.fc1.weight"
    expected = sum(s[key] for s in states) / 3
    assert torch.allclose(model["model"][key], expected, atol=1e-6)
    # Shared embeddings stay one tensor (saved once), and the average holds the weights a stripped model does.
    weights = model["model"]
    tied = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert len({weights[k].untyped_storage().data_ptr() for k in tied}) == 1
    single = checkpoints.strip(checkpoints.load(paths[-1]))
    assert weights.keys() == single["model"].keys()
    # The averaged, stripped model decodes with plain fairseq (no plugin import needed).
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(teacher / "model.pt")])
    assert len(task.target_dictionary) > 100


def test_changed_training_setting_reruns_teacher_only(workdir: Path):
    """Longer training continues the run in a new directory of its own (the shorter model stays, for the
    experiments that use it); another learning rate or model starts a new run, from update 0."""
    cfg = write_config(workdir, {"train": {"max_update": 20}})
    snakemake(workdir, "teacher", config=cfg)
    short = model_dir(workdir, "teacher", cfg)
    cfg = write_config(workdir, {"train": {"max_update": 30}})
    longer = model_dir(workdir, "teacher", cfg)
    assert longer != short and longer.name.startswith("teacher-")
    dry = snakemake(workdir, "-n", "teacher", config=cfg).stdout
    assert "train_model" in dry
    for rule in ("fetch_corpus", "spm_train", "binarize"):
        assert f"rule {rule}:" not in dry
    snakemake(workdir, "teacher", config=cfg)
    log = (workdir / f"logs/train/{longer.name}.log").read_text()
    assert f"continues {short.relative_to(workdir)}" in log
    assert f"resuming from {longer.relative_to(workdir)}/checkpoints/checkpoint_last.pt at update 20" in log
    assert checkpoints.num_updates(checkpoints.load(longer / "model.pt")) == 30
    assert checkpoints.num_updates(checkpoints.load(short / "model.pt")) == 20  # the shorter run's model stays

    # another learning rate and another architecture: a new run, from update 0
    cfg = write_config(workdir, {"train": {"max_update": 30}, "teacher": {"preset": "student_small", "train": {"lr": 0.002}}})
    snakemake(workdir, "teacher", config=cfg)
    other = model_dir(workdir, "teacher", cfg)
    new_log = (workdir / f"logs/train/{other.name}.log").read_text()
    assert "no earlier run to continue" in new_log and "resuming" not in new_log
    assert checkpoints.num_updates(checkpoints.load(longer / "model.pt")) == 30  # set aside: in its own directory
    final = checkpoints.load(other / "model.pt")
    assert checkpoints.num_updates(final) == 30 and final["cfg"]["model"].encoder_embed_dim == 128
    records = [json.loads(line) for line in (other / "train.jsonl").read_text().splitlines()]
    assert max(int(r.get("num_updates", r.get("train_num_updates", 0))) for r in records) <= 30
    assert all(r.get("epoch", 1) >= 1 for r in records)


def test_more_seeds_reuse_the_student_a_one_seed_run_trained(workdir: Path):
    """students.seeds [1, 2] names the seed-2 student student_baseline_s2, a one-seed run of seed 2 names it
    student_baseline: the same model in another directory, copied at its end instead of trained again."""
    students = {"variants": ["baseline"], "train": {"average_last": 2}}
    cfg = write_config(workdir, {"students": {**students, "seeds": [2]}})
    one = model_dir(workdir, "student_baseline", cfg)
    snakemake(workdir, str(one.relative_to(workdir) / "model.pt"), config=cfg)
    cfg = write_config(workdir, {"students": {**students, "seeds": [1, 2]}})
    two = model_dir(workdir, "student_baseline_s2", cfg)
    assert two != one
    snakemake(workdir, *(str(two.relative_to(workdir) / f) for f in ("model.pt", "spec.json")), config=cfg)
    log = (workdir / f"logs/train/{two.name}.log").read_text()
    assert f"continues {one.relative_to(workdir)}" in log
    assert f"resuming from {two.relative_to(workdir)}/checkpoints/checkpoint_last.pt at update 60" in log
    records = [json.loads(line) for line in (two / "train.jsonl").read_text().splitlines()]
    assert max(int(r.get("num_updates", r.get("train_num_updates", 0))) for r in records) == 60  # no update more
    ours, theirs = checkpoints.load(two / "model.pt"), checkpoints.load(one / "model.pt")
    assert ours["extra_state"]["averaged_from"] == theirs["extra_state"]["averaged_from"]
    assert all(torch.equal(ours["model"][key], theirs["model"][key]) for key in theirs["model"])
    spec = json.loads((two / "spec.json").read_text())
    assert spec["name"] == "student_baseline_s2" and spec["seed"] == 2


def test_a_run_at_its_limits_is_not_restarted():
    def state(updates: int, next_epoch: int) -> dict:
        return {"optimizer_history": [{"num_updates": updates}], "extra_state": {"train_iterator": {"epoch": next_epoch}}}

    by_updates = ["--max-epoch", "0", "--max-update", "60"]
    assert trained_to_the_end(state(60, 2), by_updates) and not trained_to_the_end(state(59, 2), by_updates)
    by_epochs = ["--max-epoch", "14"]  # fairseq's iterator state after epoch 14 names epoch 15
    assert trained_to_the_end(state(4046, 15), by_epochs) and not trained_to_the_end(state(3757, 14), by_epochs)
    assert not trained_to_the_end(state(10**6, 1), ["--max-update", "0"])  # no limits: never at the end


def test_run_identity_follows_data_and_teacher(tmp_path: Path):
    from pipeline.train import differences, run_identity

    data = tmp_path / "bin"
    data.mkdir()
    (data / "dict.en.txt").write_text("a 1\n")
    (data / "train.de-en.en.bin").write_bytes(b"123")
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights")
    cmd = ["python", "-m", "fairseq_cli.train", str(data), "--lr", "0.1", "--max-update", "5", "--cpu",
           "--criterion", "word_kd", "--teacher-path", str(teacher)]
    first = run_identity(cmd, data)
    assert run_identity([*cmd[:6], "--max-update", "50", *cmd[8:]], data) == first  # longer: same run
    assert "--max-update" not in first["options"] and "--cpu" not in first["options"]
    (data / "train.de-en.en.bin").write_bytes(b"456")
    assert differences(first, run_identity(cmd, data)) == "training data"
    teacher.write_bytes(b"retrained")
    assert "teacher checkpoint" in differences(first, run_identity(cmd, data))
    assert differences(None, first).startswith("no run.json")


# config/config.yaml holds every training setting's value: the specs below start from it
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
DEFAULT_TRAIN = DEFAULT_CONFIG["train"]
# the teacher keys besides its training settings (ensemble, external checkpoints, ...), as config.yaml has them
DEFAULT_TEACHER = {key: value for key, value in DEFAULT_CONFIG["teacher"].items() if key != "train"}


def test_student_specs_expand_alpha_and_temperature():
    config = {
        "train": {**DEFAULT_TRAIN, "lr": 1e-3, "warmup_updates": 10, "max_tokens": 100},
        "teacher": {**DEFAULT_TEACHER, "preset": "tiny"},
        "students": {"preset": "tiny", "variants": ["baseline", "seq_kd", "seq_word_kd"],
                     "alpha": [0.1, 0.5, 0.9], "temperature": [1.0], "train": {"lr": 5e-4}},
    }
    specs = model_specs(config)
    assert list(specs) == ["teacher", "student_baseline", "student_seq_kd", "student_seq_word_kd_a0.1_t1",
                           "student_seq_word_kd_a0.5_t1", "student_seq_word_kd_a0.9_t1"]
    kd = specs["student_seq_word_kd_a0.9_t1"]
    assert kd.targets == "distilled" and kd.train["lr"] == 5e-4 and specs["teacher"].train["lr"] == 1e-3
    args = fairseq_train_args(kd, "work/models/teacher/model.pt")
    assert args[args.index("--criterion") + 1] == "word_kd"
    assert args[args.index("--kd-alpha") + 1] == "0.9"
    assert "--teacher-path" not in fairseq_train_args(specs["student_baseline"], "t.pt")


def test_extra_args_keep_zero_values():
    # 0 == False in Python: a `value in (False, None)` test dropped {--dropout: 0.0} without a word
    assert extra_args({"--dropout": 0.0, "clip-norm": 0, "--fp16-no-flatten-grads": True, "--a": False,
                       "--b": None}) == ["--dropout", "0.0", "--clip-norm", "0", "--fp16-no-flatten-grads"]
    config = {"train": {**DEFAULT_TRAIN}, "teacher": {**DEFAULT_TEACHER, "preset": "tiny"},
              "students": {"preset": "tiny", "variants": ["baseline"], "alpha": [0.5], "temperature": [1.0],
                           "train": {"extra_args": {"--dropout": 0.0}}}}
    args = fairseq_train_args(model_specs(config)["student_baseline"], "t.pt")
    # last on the command line, after the preset's --dropout (pipeline.train), so fairseq takes it
    assert args[-2:] == ["--dropout", "0.0"]


def test_linear_lr_schedule_needs_max_update():
    config = {
        "train": {**DEFAULT_TRAIN, "lr": 1e-3, "warmup_updates": 10, "max_tokens": 100},
        "teacher": {**DEFAULT_TEACHER, "preset": "tiny"},
        "students": {"preset": "tiny", "variants": ["baseline"], "train": {"lr_scheduler": "linear"}},
    }
    with pytest.raises(ConfigError, match=r"students\.train\.lr_scheduler.*students\.train\.max_update"):
        model_specs(config)
    config["students"]["train"]["max_update"] = 300
    specs = model_specs(config)
    args = fairseq_train_args(specs["student_baseline"], "t.pt")
    assert args[args.index("--lr-scheduler") + 1] == "polynomial_decay"
    assert args[args.index("--total-num-update") + 1] == "300"
    assert args[args.index("--end-learning-rate") + 1] == "0"
    teacher = fairseq_train_args(specs["teacher"], "t.pt")
    assert teacher[teacher.index("--lr-scheduler") + 1] == "inverse_sqrt"


def test_linear_lr_schedule_anneals_to_zero(workdir: Path):
    cfg = write_config(workdir, {"train": {"max_update": 30, "max_epoch": 0, "warmup_updates": 10,
                                           "lr_scheduler": "linear", "log_interval": 5}})
    snakemake(workdir, "teacher", config=cfg)
    teacher = model_dir(workdir, "teacher", cfg)
    log = (workdir / f"logs/train/{teacher.name}.log").read_text()
    lrs = [float(v) for v in re.findall(r'"lr": "([0-9.e+-]+)"', log)]
    assert lrs and max(lrs) > 1e-4, "the warm-up reached the peak learning rate"
    assert lrs[-1] < 1e-6, f"the last update ran at lr {lrs[-1]}, not annealed to 0"
    assert checkpoints.num_updates(checkpoints.load(teacher / "model.pt")) == 30
    assert "allocator: MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=100000000000" in log  # CPU training


def test_allocator_settings_only_for_cpu_training_and_never_over_the_users(monkeypatch):
    for key in ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    assert {k: train_env(["fairseq", "--cpu"])[k] for k in ALLOCATOR_ENV} == ALLOCATOR_ENV
    assert not set(ALLOCATOR_ENV) & set(train_env(["fairseq", "--fp16"]))  # on GPU: glibc as it is
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert train_env(["fairseq", "--cpu"])["MALLOC_MMAP_MAX_"] == "65536"


def test_allocator_benchmark_times_both_variants(smoke_data: Path):
    """python -m pipeline.benchmarks.train_allocator on the tiny preset: both variants run and a ratio is printed."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.train_allocator",
                           "--data", str(data_dir(smoke_data) / "bin"), "--preset", "tiny", "--updates", "12",
                           "--interval", "4", "--max-tokens", "1000", "--reps", "1", "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = re.findall(r"run 1 +(glibc default|allocator settings): +([0-9.]+) ms/update over 8 updates, "
                      r"peak RSS ([0-9,]+) MiB", proc.stdout)
    assert [name for name, _, _ in runs] == ["glibc default", "allocator settings"]
    assert all(float(ms) > 0 and int(rss.replace(",", "")) > 50 for _, ms, rss in runs)
    ratio = float(re.search(r"ratio with / without: ([0-9.]+)", proc.stdout).group(1))
    assert ratio == pytest.approx(float(runs[1][1]) / float(runs[0][1]), rel=0.05)


def test_thread_sharing_benchmark_times_all_three_ways(smoke_data: Path):
    """python -m pipeline.benchmarks.train_threads on the tiny preset: one job at 2 threads, one at 1, two side by
    side; the printed speed-up and throughput are the ratios of the printed times."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.train_threads",
                           "--data", str(data_dir(smoke_data) / "bin"), "--preset", "tiny", "--updates", "12",
                           "--interval", "4", "--max-tokens", "1000", "--reps", "1", "--cores", "2"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    together = float(re.search(r"1 job at 2 threads +([0-9.]+) ms/update", proc.stdout).group(1))
    alone, speedup = re.search(r"1 job at 1 thread +([0-9.]+) ms/update \(2 threads' speed-up ([0-9.]+)x\)",
                               proc.stdout).groups()
    shared = float(re.search(r"2 jobs at 1 thread each +([0-9.]+) ms/update per job", proc.stdout).group(1))
    per_job = re.search(r"side by side +([0-9.]+), +([0-9.]+)$", proc.stdout, re.MULTILINE).groups()
    assert shared == pytest.approx(max(float(ms) for ms in per_job), abs=0.1)
    assert float(speedup) == pytest.approx(float(alone) / together, rel=0.02)
    throughput = float(re.search(r"throughput of 2 jobs at 1 thread / 1 job at 2 threads: ([0-9.]+)",
                                 proc.stdout).group(1))
    assert throughput == pytest.approx(2 * together / shared, rel=0.02)
    assert min(together, float(alone), shared) > 0


def test_thread_sharing_benchmark_needs_two_cores(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.train_threads", "--data", str(tmp_path), "--cores", "1"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--cores must be at least 2" in proc.stderr


def test_profile_benchmark_groups_the_update_time(smoke_data: Path):
    """python -m pipeline.benchmarks.train_profile on the tiny preset: the groups' shares add up to the whole, the
    matrix products and dropout's masks (the preset has dropout) are among them, and the largest operators are listed."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.train_profile",
                           "--data", str(data_dir(smoke_data) / "bin"), "--preset", "tiny", "--max-tokens", "1000",
                           "--skip", "2", "--updates", "3", "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"tiny, CE updates of 1000 tokens, 1 thread: [0-9.]+ ms/update over 3 updates \(after 2\), "
                     r"[0-9]+% of it in operators",
                     proc.stdout)
    shares = dict(re.findall(r"^  (\w[\w ]*?) +([0-9.]+)%$", proc.stdout, re.MULTILINE))
    assert list(shares) == ["matrix products", "dropout masks", "attention kernels", "softmax", "layer norm", "other"]
    assert sum(float(v) for v in shares.values()) == pytest.approx(100, abs=0.5)
    assert float(shares["matrix products"]) > 0 and float(shares["dropout masks"]) > 0
    assert "aten::mm" in proc.stdout.split("largest operators:")[1]


def test_profile_groups_by_operator_name():
    from pipeline.benchmarks.train_profile import group_shares
    shares = group_shares({"aten::mm": 50.0, "aten::addmm": 10.0, "aten::bernoulli_": 20.0, "aten::_log_softmax": 5.0,
                           "aten::_scaled_dot_product_flash_attention_for_cpu": 5.0, "aten::copy_": 10.0})
    assert shares == pytest.approx({"matrix products": 0.6, "dropout masks": 0.2, "attention kernels": 0.05,
                                    "softmax": 0.05, "layer norm": 0.0, "other": 0.1})


def test_cpu_bf16_benchmark_times_both_variants(smoke_data: Path):
    """python -m pipeline.benchmarks.cpu_bf16 on the tiny preset: float32 and --amp run alternately and the printed
    ratio is the ratio of the printed times."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.cpu_bf16",
                           "--data", str(data_dir(smoke_data) / "bin"), "--presets", "tiny", "--updates", "12",
                           "--interval", "4", "--max-tokens", "1000", "--reps", "1", "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"native bfloat16 .*: (yes|no, emulated)", proc.stdout)
    runs = re.findall(r"tiny run 1 +(float32|bfloat16 autocast): +([0-9.]+) ms/update over 8 updates", proc.stdout)
    assert [name for name, _ in runs] == ["float32", "bfloat16 autocast"]
    fp32, bf16, ratio = map(float, re.search(r"tiny +float32 +([0-9.]+) ms/update, bfloat16 autocast +([0-9.]+) "
                                              r"ms/update, float32 / bfloat16 ([0-9.]+)", proc.stdout).groups())
    assert (fp32, bf16) == (float(runs[0][1]), float(runs[1][1]))
    assert ratio == pytest.approx(fp32 / bf16, rel=0.02)


def test_cpu_bf16_reaches_fairseq_only_on_a_native_bf16_cpu(monkeypatch):
    from pipeline import launch, train

    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch, "cpu_has_native_bf16", lambda: True)
    assert train.device_args(fp16=True, cpu_bf16=True) == ["--cpu", "--amp"]
    assert train.device_args(fp16=True, cpu_bf16=False) == ["--cpu"]
    monkeypatch.setattr(launch, "cpu_has_native_bf16", lambda: False)
    assert train.device_args(fp16=True, cpu_bf16=True) == ["--cpu"]
