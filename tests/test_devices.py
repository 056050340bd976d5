"""pipeline.devices, the local GPU pool, on a fake device list (PIPELINE_GPUS): no GPU needed."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from pipeline import devices
from pipeline.devices import DeviceError, acquire, take, visible_devices

# Each job claims its devices in a shared directory with O_EXCL and notes any clash, holds them a
# moment, then gives them back: two jobs ever sharing a device leave a clash file behind.
PROBE = r"""
import os, sys, time
shared = sys.argv[1]
mine = [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d]
claimed = []
for d in mine:
    try:
        os.close(os.open(os.path.join(shared, "busy-" + d), os.O_CREAT | os.O_EXCL))
        claimed.append(d)
    except FileExistsError:
        open(os.path.join(shared, "clash-%s-%d" % (d, os.getpid())), "w").close()
with open(os.path.join(shared, "got-%d" % os.getpid()), "w") as f:
    f.write(",".join(mine))
time.sleep(float(sys.argv[2]))
for d in claimed:
    os.unlink(os.path.join(shared, "busy-" + d))
"""


def cli_env(gpus: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = str(REPO)
    if gpus is None:
        env.pop("PIPELINE_GPUS", None)
    else:
        env["PIPELINE_GPUS"] = gpus
    env.update(extra)
    return env


def wrap(n: int, lock_dir: Path, *command: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.devices", "--gpus", str(n), "--lock-dir", str(lock_dir), "--", *command]


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 30) -> str:
    """Read proc's stderr until a line containing text; returns everything read."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {text!r} within {timeout} s; got:\n{seen}"
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            line = proc.stderr.readline()
            assert line, f"stderr closed before {text!r}; got:\n{seen}"
            seen += line
    return seen


# --- discovery --------------------------------------------------------------------------------------
def test_visible_devices_sources(tmp_path, monkeypatch):
    assert visible_devices({"PIPELINE_GPUS": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "5"}) == ["0", "1", "2", "3"]
    assert visible_devices({"PIPELINE_GPUS": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]  # e.g. set by Slurm
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}) == ["GPU-aa", "GPU-bb"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at an invalid entry
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-a)'\necho 'GPU 1: Fake (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert visible_devices({}) == ["0", "1"]


def test_slurm_jobs_get_their_own_lock_namespace(tmp_path):
    assert devices.default_lock_dir({"PIPELINE_GPU_LOCK_DIR": str(tmp_path)}) == tmp_path
    assert devices.default_lock_dir({"PIPELINE_GPU_LOCK_DIR": str(tmp_path), "SLURM_JOB_ID": "42"}) == (
        tmp_path / "slurm-job-42"
    )


# --- concurrency ------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_job,jobs", [(1, 6), (2, 4)])
def test_concurrent_commands_never_share_a_device(tmp_path, per_job, jobs):
    shared, locks = tmp_path / "shared", tmp_path / "locks"
    shared.mkdir()
    env = cli_env("0,1,2")
    procs = [
        subprocess.Popen(wrap(per_job, locks, sys.executable, "-c", PROBE, str(shared), "0.4"), env=env,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(jobs)
    ]
    logs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * jobs, logs
    assert not list(shared.glob("clash-*")), logs
    got = [f.read_text().split(",") for f in shared.glob("got-*")]
    assert len(got) == jobs
    assert all(len(g) == per_job and set(g) <= {"0", "1", "2"} for g in got), got
    assert all("acquired GPU(s)" in log for log in logs), logs
    if per_job == 2:  # 3 devices: only one 2-GPU job at a time, so the others waited
        assert sum("waiting for 2 free GPU(s)" in log for log in logs) >= 1, logs


def test_threads_never_share_a_device(tmp_path):
    in_use: set[str] = set()
    guard = threading.Lock()
    clashes: list[str] = []
    taken: list[str] = []

    def job():
        with acquire(1, devices=["0", "1"], lock_dir=tmp_path, set_env=False, poll=0.05, logger=lambda m: None) as lease:
            (device,) = lease.devices
            with guard:
                if device in in_use:
                    clashes.append(device)
                in_use.add(device)
                taken.append(device)
            time.sleep(0.05)
            with guard:
                in_use.discard(device)

    threads = [threading.Thread(target=job) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not clashes
    assert len(taken) == 8


def test_acquire_sets_and_restores_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    with acquire(1, lock_dir=tmp_path, logger=lambda m: None) as lease:
        assert lease.devices == ["3"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        with acquire(1, lock_dir=tmp_path, devices=["3", "4"], logger=lambda m: None) as other:
            assert other.devices == ["4"]  # "3" is held by the outer block
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,4"
    with acquire(2, lock_dir=tmp_path, devices=["3", "4"], timeout=0, logger=lambda m: None) as both:
        assert both.devices == ["3", "4"]  # everything was released


# --- limits and CPU fallback ------------------------------------------------------------------------
def test_more_gpus_than_visible_fails_clearly(tmp_path):
    proc = subprocess.run(wrap(3, tmp_path, "true"), env=cli_env("0,1"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "3 GPU(s) requested but only 2 visible (0,1)" in proc.stderr
    with pytest.raises(DeviceError, match="only 2 visible"):
        take(3, devices=["0", "1"], lock_dir=tmp_path)


@pytest.mark.parametrize("gpus,n,message", [
    ("0,1", 0, "no GPU requested: running on CPU"),
    ("", 1, "1 GPU(s) requested but no GPU is visible: running on CPU"),
])
def test_cpu_fallback(tmp_path, gpus, n, message):
    proc = subprocess.run(
        wrap(n, tmp_path, sys.executable, "-c", "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"),
        env=cli_env(gpus, CUDA_VISIBLE_DEVICES="0"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "''"  # torch sees no GPU
    assert message in proc.stderr


def test_strict_refuses_cpu_fallback(tmp_path):
    proc = subprocess.run([*wrap(1, tmp_path, "true")[:-2], "--strict", "--", "true"], env=cli_env(""),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no GPU is visible" in proc.stderr


# --- process behaviour ------------------------------------------------------------------------------
def test_exit_code_is_forwarded(tmp_path):
    proc = subprocess.run(wrap(1, tmp_path, "sh", "-c", "exit 7"), env=cli_env("0"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 7


def test_missing_command_fails(tmp_path):
    proc = subprocess.run(wrap(1, tmp_path, "no-such-command-xyz"), env=cli_env("0"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 127 and "cannot run 'no-such-command-xyz'" in proc.stderr


def test_waits_for_a_busy_device_then_runs(tmp_path):
    holder = take(1, devices=["0"], lock_dir=tmp_path, logger=lambda m: None)
    try:
        proc = subprocess.Popen(wrap(1, tmp_path, "true"), env=cli_env("0"), stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "waiting for 1 free GPU(s)")
        assert proc.poll() is None
    finally:
        holder.release()
    proc.wait(timeout=30)
    assert proc.returncode == 0


def test_lock_released_when_command_is_killed(tmp_path):
    proc = subprocess.Popen(wrap(1, tmp_path, "sleep", "60"), env=cli_env("0"), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "acquired GPU(s) 0")
        with pytest.raises(DeviceError, match="timed out"):
            take(1, devices=["0"], lock_dir=tmp_path, timeout=0.3, poll=0.05, logger=lambda m: None)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lease = take(1, devices=["0"], lock_dir=tmp_path, timeout=5, poll=0.05, logger=lambda m: None)
    assert lease.devices == ["0"]
    lease.release()


def test_signal_reaches_the_command(tmp_path):
    """The wrapper execs the command: SIGTERM ends it with the signal's status, and frees the device."""
    proc = subprocess.Popen(wrap(1, tmp_path, "sleep", "60"), env=cli_env("0"), stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, "acquired GPU(s) 0")
    proc.terminate()
    assert proc.wait(timeout=30) == -signal.SIGTERM
    take(1, devices=["0"], lock_dir=tmp_path, timeout=5, poll=0.05, logger=lambda m: None).release()
