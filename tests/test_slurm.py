"""The Slurm profile against a real single-node Slurm started on this machine (.ci/slurm.sh).

Every workflow run here goes through `snakemake --workflow-profile profiles/slurm`, with fast status
polling. What is checked, per target in TARGETS:
  - the run completes, and the rules expected to run were really submitted as Slurm jobs, which the
    accounting database (sacct) and the controller (scontrol) both know, in the partition and account
    given through SBATCH_PARTITION / SBATCH_ACCOUNT;
  - jobs of rules that declare `gpu=N` requested N GPUs (gres/gpu in the requested TRES), other jobs none;
  - where a rule is made to fail once (pipeline/faults.py), its first job FAILED and the profile's
    retries resubmitted it.
To cover another target, add a Target to TARGETS.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import MIRROR, REPO, stages, write_config

from pipeline import faults

SLURM_SH = REPO / ".ci" / "slurm.sh"
PROFILE = REPO / "profiles" / "slurm"
PROBES = REPO / "tests" / "slurm_gpu" / "Snakefile"
# .ci/slurm.sh sets up partitions debug (the default) and batch, and lets root use account pipeline
# besides its default, root: jobs found in batch / pipeline were sent there by the profile.
PARTITION, ACCOUNT = "batch", "pipeline"
# Test polling: the profile's production values would add ~30 s per job.
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "1"]
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", re.M)


@dataclass(frozen=True)
class Target:
    name: str
    targets: tuple[str, ...]
    rules: frozenset[str]  # rules whose jobs must have gone through Slurm
    snakefile: Path = REPO / "Snakefile"
    smoke_config: bool = True  # --configfile: config/smoke.yaml with the local mirror (conftest.write_config)
    gpus: dict[str, int | None] = field(default_factory=dict)  # rule -> GPUs per job (None: some, any number)
    fail_once: str | None = None  # rule made to fail on its first attempt
    overrides: dict = field(default_factory=dict)  # merged into the smoke config (conftest.write_config)
    local_first: tuple[str, ...] = ()  # built by a local snakemake run (1 core) before the Slurm run

    def __str__(self) -> str:
        return self.name


DATA_RULES = {"fetch_corpus", "normalize", "clean_train", "spm_train", "spm_encode", "binarize"}
PIPELINE_RULES = DATA_RULES | {"train_model", "distill_shard_index", "distill_decode_shard", "distill_postprocess",
                                "distill_merge", "distill_binarize", "kdcache_shard",
                                "evaluate_model", "ct2_convert", "evaluate_model_ct2", "speedup_vs_teacher",
                                "report_summary"}
# The whole workflow on Slurm, on the smallest smoke plan that still has a job of every rule of
# PIPELINE_RULES: one student, seq_word_kd (distilled targets and the teacher cache), one distillation
# shard, one cache shard per split, one speed pass per evaluation and one round per side-by-side speed-up. Every Slurm job costs two Snakemake
# starts and status polling on top of its work, and tests/test_pipeline.py runs the full smoke plan
# (four students, three shards) locally: here the point is the cluster path, not the plan's breadth.
PIPELINE_ON_SLURM = {
    "students": {"variants": ["seq_word_kd"], "kd_cache_shards": 1},
    "distill": {"shard_size": 100000},
    "evaluate": {"speed_runs": 1, "speedup_rounds": 1},
}
TARGETS = [
    # the whole pipeline: data, teacher, distillation, a word-KD student on distilled data, evaluation, report
    Target("pipeline", ("all",), frozenset(PIPELINE_RULES),
           gpus={"train_model": 1, "distill_decode_shard": 1, "kdcache_shard": 1, "evaluate_model": 1,
                 "evaluate_model_ct2": 1, "speedup_vs_teacher": 1},
           overrides=PIPELINE_ON_SLURM),
    Target(
        "probes", ("all",), frozenset({"gpu_probe", "flaky", "gpu_tasks_probe"}), snakefile=PROBES, smoke_config=False,
        gpus={"gpu_probe": None, "gpu_tasks_probe": 2}, fail_once="flaky",
    ),
]
# Multi-task training (pipeline/launch.py): the teacher and a word-KD student, each trained by 2 CPU
# tasks (gloo) of one Slurm job under srun; a few updates only (checkpoints at 3 and 6 for averaging).
# The data stage runs locally first (the pipeline target covers it on Slurm): 20 s instead of minutes.
WORD_KD_STUDENT = "student_word_kd_a0.5_t1"
MULTITASK = Target(
    "multitask", ("students",),  # the word-KD student, and so the teacher
    frozenset({"train_model"}), local_first=("data",),
    overrides={
        "resources": {"train": {"threads": 1, "gpus": 0, "tasks": 2, "mem_mb": 2000, "runtime": 30}},
        "train": {"max_update": 6, "validate_interval_updates": 3, "save_interval_updates": 3, "log_interval": 2},
        # the online teacher: each rank loads its own, outside DDP (the cached path reads files instead)
        "students": {"variants": ["word_kd"], "kd_cache": False, "kd_topk": 0},
    },
)
TARGETS.append(MULTITASK)
PER_NODE_GPU_RULES = {"gpu_tasks_probe"}


# --- the cluster ------------------------------------------------------------------------------------
def _slurm_sh(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SH), *args], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm with accounting and two fake GPUs; stopped afterwards if we started it."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests install and start Slurm daemons, which needs root")
    install = _slurm_sh("install")
    if install.returncode != 0:
        pytest.skip(f"Slurm packages could not be installed (.ci/slurm.sh install):\n{install.stdout[-3000:]}")
    was_running = _slurm_sh("status", timeout=60).returncode == 0
    start = _slurm_sh("start", timeout=300)
    assert start.returncode == 0, f".ci/slurm.sh start failed:\n{start.stdout[-6000:]}"
    env = _slurm_sh("env").stdout.strip()  # export SLURM_CONF=...
    conf = env.split("=", 1)[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", conf)
        yield conf
    if not was_running and not os.environ.get("PIPELINE_SLURM_KEEP"):
        stop = _slurm_sh("stop", timeout=120)
        assert stop.returncode == 0, f".ci/slurm.sh stop failed:\n{stop.stdout[-3000:]}"


# --- runs and records -------------------------------------------------------------------------------
@dataclass
class SlurmRun:
    target: Target
    workdir: Path
    proc: subprocess.CompletedProcess
    jobs: dict[str, list[str]]  # rule -> Slurm job ids, in submission order
    records: dict[str, dict[str, str]]  # job id -> sacct fields

    @property
    def output(self) -> str:
        return self.proc.stdout


def run_env(**extra: str) -> dict[str, str]:
    # No Slurm job context, fake GPU list or device restriction may leak from the caller into the jobs.
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("SLURM_") and k != "SLURM_CONF") and k not in ("PIPELINE_GPUS", "CUDA_VISIBLE_DEVICES")}
    env.update(PYTHONPATH=str(REPO), SBATCH_PARTITION=PARTITION, SBATCH_ACCOUNT=ACCOUNT, **extra)
    return env


class Launched:
    """A snakemake run started in the background (output in workdir/snakemake.out); result() waits for it."""

    def __init__(self, target: Target, workdir: Path, env: dict[str, str], timeout: int = 1200):
        self.target, self.workdir, self.timeout = target, workdir, timeout
        self.cmd = [sys.executable, "-m", "snakemake", *target.targets, "--workflow-profile", str(PROFILE),
                    "-s", str(target.snakefile), "--directory", str(workdir), *FAST_POLL]
        if target.smoke_config:  # last: --configfile takes every word after it
            self.cmd += ["--configfile", str(write_config(workdir, target.overrides))]
        self.out_path = workdir / "snakemake.out"
        command = self.cmd
        if target.local_first:  # same config, local executor; then the Slurm run finds them done
            local = [sys.executable, "-m", "snakemake", *target.local_first, "-s", str(target.snakefile),
                     "--directory", str(workdir), "--cores", "1", *self.cmd[self.cmd.index("--configfile"):]]
            command = ["bash", "-c", f"{shlex.join(local)} && exec {shlex.join(self.cmd)}"]
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(command, cwd=workdir, env=env, text=True, stdout=out, stderr=subprocess.STDOUT)
        self._result: SlurmRun | None = None

    def result(self) -> SlurmRun:
        if self._result is None:
            try:
                self.proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            output = self.out_path.read_text(errors="replace")
            done = subprocess.CompletedProcess(self.cmd, self.proc.returncode, output)
            jobs: dict[str, list[str]] = {}
            for jobid, log in SUBMITTED.findall(output):
                # log: .snakemake/slurm_logs/rule_<rule>[/<wildcards>]/<jobid>.log
                rule = next(p for p in reversed(Path(log).parts) if p.startswith("rule_"))[len("rule_"):]
                jobs.setdefault(rule, []).append(jobid)
            ids = [j for ids in jobs.values() for j in ids]
            self._result = SlurmRun(self.target, self.workdir, done, jobs, sacct(ids) if ids else {})
        return self._result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # snakemake cancels its Slurm jobs (scancel) on SIGTERM
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def launch(target: Target, workdir: Path) -> Launched:
    extra = {}
    if target.fail_once:
        extra["PIPELINE_FAULT_ONCE"] = f"{target.fail_once}:{workdir / 'fault-once.marker'}"
    return Launched(target, workdir, run_env(**extra))


SACCT_FIELDS = ["JobID", "JobName", "State", "ExitCode", "ReqTRES", "AllocTRES", "Comment", "Partition", "Account"]
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def sacct(ids: list[str], wait: float = 30) -> dict[str, dict[str, str]]:
    """sacct records of the jobs (allocations only), waiting until the database has all in a final state."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)],
                             text=True, capture_output=True, check=True).stdout
        records = {}
        for line in out.splitlines():
            values = line.split("|", len(SACCT_FIELDS) - 1)
            if len(values) == len(SACCT_FIELDS):
                records[values[0]] = dict(zip(SACCT_FIELDS, values, strict=True))
        done = all(records.get(j, {}).get("State", "").startswith(FINAL_STATES) for j in ids)
        if done or time.monotonic() > deadline:
            return records
        time.sleep(1)


def scontrol_job(jobid: str) -> dict[str, str]:
    """The controller's record of a job (kept for MinJobAge = 300 s after it ends); {} once forgotten."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", jobid], text=True, capture_output=True)
    if proc.returncode != 0:
        return {}
    return dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)


def tres(record: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in record.split(",") if "=" in item)


def slurm_logs(run: SlurmRun, limit: int = 4000) -> str:
    logs = sorted((run.workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-limit:]}" for p in logs[-4:])


def describe(run: SlurmRun) -> str:
    return f"snakemake output (tail):\n{run.output[-6000:]}\nsacct: {run.records}\n{slurm_logs(run)}"


def runnable(target: Target) -> str | None:
    """Why the target cannot run here, or None."""
    if target.smoke_config and not MIRROR.is_dir():
        return f"Multi30k mirror not found at {MIRROR}"
    return None


@pytest.fixture(scope="session")
def slurm_launches(request, slurm_cluster, tmp_path_factory):
    """Every target the selected tests need, started at once: the runs share the cluster and mostly wait
    on status polling, so together they take little longer than the longest alone."""
    wanted: dict[str, Target] = {}
    for item in request.session.items:
        target = getattr(item, "callspec", None) and item.callspec.params.get("slurm_run")
        if isinstance(target, Target) and runnable(target) is None:
            wanted.setdefault(target.name, target)
    launches = {name: launch(t, tmp_path_factory.mktemp(f"slurm_{name}")) for name, t in wanted.items()}
    yield launches
    for launched in launches.values():
        launched.stop()


@pytest.fixture(scope="session")
def slurm_run(request, slurm_launches) -> SlurmRun:
    """The finished run of one target through profiles/slurm (one run per target and session)."""
    target: Target = request.param
    reason = runnable(target)
    if reason:
        pytest.skip(reason)
    return slurm_launches[target.name].result()


def by_target(targets):
    return pytest.mark.parametrize("slurm_run", targets, ids=str, indirect=True)


# --- tests ------------------------------------------------------------------------------------------
@by_target(TARGETS)
def test_completes_on_slurm(slurm_run):
    run = slurm_run
    assert run.proc.returncode == 0, describe(run)
    missing = set(run.target.rules) - set(run.jobs)
    assert not missing, f"rules never submitted to Slurm: {sorted(missing)}\n{describe(run)}"
    for rule, ids in run.jobs.items():
        last = run.records.get(ids[-1], {})
        assert last.get("State") == "COMPLETED", f"{rule}: last job {ids[-1]} is {last}\n{describe(run)}"


@by_target(TARGETS)
def test_jobs_recorded_by_slurm(slurm_run):
    """sacct has every job, under our partition and account, commented with its rule; scontrol knows it."""
    run = slurm_run
    assert run.jobs, describe(run)
    for rule, ids in run.jobs.items():
        for jobid in ids:
            rec = run.records.get(jobid)
            assert rec, f"job {jobid} ({rule}) not in sacct\n{describe(run)}"
            assert rec["Comment"] == f"rule_{rule}" or rec["Comment"].startswith(f"rule_{rule}_wildcards_"), rec
            assert (rec["Partition"], rec["Account"]) == (PARTITION, ACCOUNT), rec
            ctl = scontrol_job(jobid)
            if ctl:  # forgotten after MinJobAge; a slow session may get there
                assert ctl["JobId"] == jobid and ctl["Partition"] == PARTITION, ctl


@by_target(TARGETS)
def test_gpu_requests(slurm_run):
    """A rule's `gpu=N` reached sbatch: gres/gpu=N in the job's requested TRES; no GPUs for other rules."""
    run = slurm_run
    assert run.jobs, describe(run)
    assert set(run.target.gpus) <= set(run.jobs), f"GPU rules not submitted: {run.target.gpus}\n{describe(run)}"
    for rule, ids in run.jobs.items():
        for jobid in ids:
            requested = tres(run.records[jobid]["ReqTRES"])
            if rule in run.target.gpus:
                want = run.target.gpus[rule]
                assert int(requested.get("gres/gpu", 0)) >= 1, f"{rule} job {jobid} requested no GPU: {requested}"
                if want is not None:
                    assert int(requested["gres/gpu"]) == want, (rule, jobid, requested)
                ctl = scontrol_job(jobid)
                if ctl:
                    # a multi-task job asks per node (--gpus-per-node), the others for the job (--gpus)
                    per = "TresPerNode" if rule in PER_NODE_GPU_RULES else "TresPerJob"
                    assert "gres:gpu" in ctl.get(per, ""), ctl
            else:
                assert "gres/gpu" not in requested, f"{rule} job {jobid} requested GPUs: {requested}"


@by_target([t for t in TARGETS if t.fail_once])
def test_failed_job_is_retried(slurm_run):
    run = slurm_run
    rule = run.target.fail_once
    ids = run.jobs.get(rule, [])
    states = [run.records[j]["State"] for j in ids]
    assert states == ["FAILED", "COMPLETED"], f"{rule}: jobs {ids} states {states}\n{describe(run)}"
    assert (run.workdir / "fault-once.marker").exists()
    assert "Trying to restart job" in run.output


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.mark.parametrize("slurm_run", [t for t in TARGETS if t.name == "probes"], ids=str, indirect=True)
def test_gpu_devices_inside_job(slurm_run):
    """Slurm set CUDA_VISIBLE_DEVICES for the job's GPUs, and pipeline.devices handed exactly those on."""
    run = slurm_run
    assert run.proc.returncode == 0, describe(run)
    seen = {}
    for n in (1, 2):
        job = read_env(run.workdir / f"gpu_probe_{n}.job.env")
        cmd = read_env(run.workdir / f"gpu_probe_{n}.cmd.env")
        assert job["SLURM_JOB_ID"] in run.jobs["gpu_probe"], job["SLURM_JOB_ID"]
        assert tres(run.records[job["SLURM_JOB_ID"]]["ReqTRES"]).get("gres/gpu") == str(n)
        devices = job.get("CUDA_VISIBLE_DEVICES", "")
        assert len(devices.split(",")) == n and all(d in ("0", "1") for d in devices.split(",")), devices
        assert cmd["CUDA_VISIBLE_DEVICES"] == devices, (devices, cmd["CUDA_VISIBLE_DEVICES"])
        seen[n] = devices
    assert seen[2] == "0,1"


RANK_LINE = re.compile(r"^(\d+): .*\| distributed init \(rank (\d+)\): tcp://", re.M)


def job_steps(jobid: str) -> dict[str, str]:
    """sacct's steps of a job: step id -> NTasks (the srun step of a 2-task run has 2)."""
    out = subprocess.run(["sacct", "-P", "-n", "-j", jobid, "-o", "JobID,NTasks"], text=True,
                         capture_output=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


@pytest.mark.parametrize("slurm_run", [MULTITASK], ids=str, indirect=True)
def test_multitask_training(slurm_run):
    """resources.train tasks 2: each training job is one Slurm job of 2 tasks; pipeline.train runs once and
    starts fairseq under srun, once per task; fairseq's Slurm initialisation makes ranks 0 and 1 of a world
    of 2 (gloo on CPU); the word-KD student's criterion holds its teacher in each rank; both models decode."""
    run = slurm_run
    assert run.proc.returncode == 0, describe(run)
    assert len(run.jobs.get("train_model", [])) == 2, describe(run)
    for jobid in run.jobs["train_model"]:
        requested = tres(run.records[jobid]["ReqTRES"])
        assert (requested.get("node"), requested.get("cpu")) == ("1", "2"), requested  # 2 tasks x 1 CPU
        assert "gres/gpu" not in requested, requested
        steps = job_steps(jobid)
        assert steps.get(f"{jobid}.0") == "2", f"job {jobid}: no 2-task srun step: {steps}"
    layout = stages(run.workdir)
    for model in ("teacher", WORD_KD_STUDENT):
        log = (run.workdir / "logs" / "train" / f"{layout.models[model].dir}.log").read_text(errors="replace")
        ranks = {(int(label), int(rank)) for label, rank in RANK_LINE.findall(log)}
        assert ranks == {(0, 0), (1, 1)}, f"{model}: ranks {ranks}\n{log[-4000:]}"
        assert "world size 2, under srun" in log and "srun --nodes=1 --ntasks=2 --ntasks-per-node=2" in log, log[-4000:]
        assert "training on 2 devices" in log and "'distributed_world_size': 2" in log, log[-4000:]
        assert re.search(r"^0: .*done training in", log, re.M), log[-4000:]
        assert f"wrote {layout.model_dir(model)}/model.pt (update 6)" in log, log[-4000:]
        assert "Traceback" not in log, log[-4000:]
        if model == WORD_KD_STUDENT:
            assert f"word_kd: 1 teacher(s) ['{layout.model_dir('teacher')}/model.pt']" in log, log[-4000:]
            assert "outside the criterion" in log
        # the result loads and decodes (on this machine, outside Slurm)
        source = "\n".join(["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch."])
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.translate", "--model", str(run.workdir / layout.model_dir(model) / "model.pt"),
             "--beam", "2", "--cpu"],
            input=source + "\n", text=True, capture_output=True, cwd=run.workdir, env=run_env(), timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert len(lines) == 3 and all(line.strip() for line in lines), out.stdout


@pytest.mark.parametrize("slurm_run", [t for t in TARGETS if t.name == "probes"], ids=str, indirect=True)
def test_gpu_tasks_under_srun(slurm_run):
    """The GPU side of multi-task training, with fake GPUs: one job of 2 tasks and 2 GPUs on its node; the
    rule ran once and started srun (pipeline.launch); each task has its rank and local id, 2 tasks per
    node, and sees both of the node's GPUs (fairseq then takes cuda:SLURM_LOCALID)."""
    run = slurm_run
    assert run.proc.returncode == 0, describe(run)
    (jobid,) = run.jobs["gpu_tasks_probe"]
    requested = tres(run.records[jobid]["ReqTRES"])
    assert (requested.get("gres/gpu"), requested.get("node")) == ("2", "1"), requested
    assert job_steps(jobid).get(f"{jobid}.0") == "2"
    lines = (run.workdir / "gpu_tasks.env").read_text().splitlines()
    tasks = {}
    for line in lines:
        label, fields = line.split(": ", 1)
        tasks[int(label)] = dict(item.split("=", 1) for item in fields.split())
    assert sorted(tasks) == [0, 1], lines
    for label, env in tasks.items():
        assert env["PROCID"] == env["LOCALID"] == str(label), lines
        assert env["NTASKS_PER_NODE"] == "2" and env["NODELIST"], lines
        assert env["CUDA"] == "0,1", lines


def test_slurm_sh_is_idempotent(slurm_cluster):
    """`start` on a running cluster is a no-op that still reports ready; `status` sees every daemon."""
    assert shutil.which("sinfo")
    again = _slurm_sh("start", timeout=120)
    assert again.returncode == 0 and "ready" in again.stdout, again.stdout
    status = _slurm_sh("status", timeout=60)
    assert status.returncode == 0, status.stdout


# --- the fault switch itself (no cluster needed) ----------------------------------------------------
def test_fault_switch_fails_once(tmp_path):
    marker = tmp_path / "sub" / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO), PIPELINE_FAULT_ONCE=f"other:/nonexistent/x,flaky:{marker}")
    first = subprocess.run([sys.executable, "-m", "pipeline.faults", "flaky"], env=env, capture_output=True, text=True)
    assert first.returncode == faults.FAULT_EXIT_CODE and "injected failure of stage 'flaky'" in first.stderr
    assert marker.exists()
    again = subprocess.run([sys.executable, "-m", "pipeline.faults", "flaky"], env=env, capture_output=True, text=True)
    assert again.returncode == 0
    unnamed = subprocess.run([sys.executable, "-m", "pipeline.faults", "spm_train"], env=env, capture_output=True)
    assert unnamed.returncode == 0


def test_fault_switch_is_off_by_default_and_checks_its_spec(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.maybe_fail("anything")  # returns
    assert faults.armed("clean", "train:/tmp/a, clean:/tmp/b") == Path("/tmp/b")
    with pytest.raises(ValueError, match="<stage>:<marker file>"):
        faults.armed("clean", "clean")
