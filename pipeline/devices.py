"""A local GPU pool: concurrent jobs on one machine get disjoint GPUs.

In local mode Snakemake's `gpu` resource is only a counter; it never sets CUDA_VISIBLE_DEVICES, so two
GPU jobs running at once would both use GPU 0. Wrap each GPU command instead:

    python -m pipeline.devices --gpus 1 -- fairseq-train ...

The wrapper finds the visible GPUs, takes N of them with one `flock` per device (lock files in a lock
directory), sets CUDA_VISIBLE_DEVICES to them and execs the command. The command inherits the locks, so
they are held exactly as long as it (and any child it forks) lives, and the kernel drops them when it
exits, however it ends (SIGKILL included); its exit status and signals are its own. When every device
is taken the wrapper logs once and waits. With `--gpus 0`, or when no GPU is visible at all, the command
runs on the CPU with CUDA_VISIBLE_DEVICES="" (so torch sees no GPU) and a log line that says so.

Which GPUs are visible, first match wins:
  1. PIPELINE_GPUS, a comma-separated list ("0,1,2,3"; "" for none): an override, used by the tests;
  2. CUDA_VISIBLE_DEVICES when set (Slurm sets it to the job's allocation);
  3. `nvidia-smi -L`, when that command exists;
  4. torch.cuda.device_count(), when torch imports.

Under Slurm (SLURM_JOB_ID set) the locks live in a per-job subdirectory: Slurm already keeps jobs apart,
and with device cgroups every job numbers its own GPUs from 0, so a node-wide namespace would make
unrelated jobs wait for each other. Inside one job (or one machine without Slurm) the locks keep
concurrent commands apart.

Python API, for stage code that starts its GPU work itself:

    from pipeline.devices import acquire
    with acquire(1) as lease:          # lease.devices == ["2"], or [] on CPU
        subprocess.run([...])          # os.environ["CUDA_VISIBLE_DEVICES"] is set inside the block

Setting CUDA_VISIBLE_DEVICES in-process only affects CUDA if torch has not initialised it yet; starting
subprocesses inside the block is always safe.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

OVERRIDE_ENV = "PIPELINE_GPUS"
LOCK_DIR_ENV = "PIPELINE_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "pipeline-gpu-locks"
POLL_SECONDS = 0.5
# CUDA_VISIBLE_DEVICES values meaning "no device"
_NO_DEVICE = {"", "-1", "none", "nodevfiles"}


class DeviceError(RuntimeError):
    """A request that can never be satisfied (more GPUs than visible), or a wait that timed out."""


def log(message: str) -> None:
    print(f"[devices] {message}", file=sys.stderr, flush=True)


def _split(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if any(item.lower() in _NO_DEVICE for item in items):
        # CUDA stops at the first invalid entry; "-1" / "NoDevFiles" mean no GPU at all
        items = items[: next(i for i, item in enumerate(items) if item.lower() in _NO_DEVICE)]
    return items


def visible_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    env = os.environ if env is None else env
    if OVERRIDE_ENV in env:
        return _split(env[OVERRIDE_ENV])
    if "CUDA_VISIBLE_DEVICES" in env:
        return _split(env["CUDA_VISIBLE_DEVICES"])
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env[LOCK_DIR_ENV]) if env.get(LOCK_DIR_ENV) else DEFAULT_LOCK_DIR
    job = env.get("SLURM_JOB_ID")
    return base / f"slurm-job-{job}" if job else base


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _open_lock(lock_dir: Path, device: str) -> int:
    path = lock_dir / _lock_name(device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.fchmod(fd, 0o666)  # other users on a shared machine must be able to lock it too
    except OSError:
        pass
    return fd


def _make_lock_dir(lock_dir: Path) -> None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir.chmod(0o1777)
    except OSError:
        pass


class Lease:
    """GPUs held by this process: `devices` (CUDA_VISIBLE_DEVICES entries; [] means CPU)."""

    def __init__(self, devices: list[str], fds: list[int]):
        self.devices = devices
        self._fds = fds

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.devices)

    @property
    def on_cpu(self) -> bool:
        return not self.devices

    def make_inheritable(self) -> None:
        """Let an exec'd command (and its children) keep holding the locks."""
        for fd in self._fds:
            os.set_inheritable(fd, True)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __repr__(self) -> str:
        return f"Lease(devices={self.devices!r})"


def take(
    n: int,
    *,
    devices: Sequence[str] | None = None,
    lock_dir: Path | str | None = None,
    timeout: float | None = None,
    poll: float = POLL_SECONDS,
    strict: bool = False,
    logger: Callable[[str], None] = log,
) -> Lease:
    """Lock n of the visible GPUs, waiting while too few are free; the caller must release() the lease.

    n == 0, or no visible GPU at all (unless strict), gives a CPU lease (no devices). More GPUs than
    visible raises DeviceError at once; so does a wait longer than timeout seconds.
    """
    if n < 0:
        raise DeviceError(f"--gpus must be >= 0, got {n}")
    pool = list(visible_devices() if devices is None else devices)
    if n == 0:
        logger("no GPU requested: running on CPU (CUDA_VISIBLE_DEVICES='')")
        return Lease([], [])
    if not pool:
        if strict:
            raise DeviceError(f"{n} GPU(s) requested but no GPU is visible")
        logger(f"{n} GPU(s) requested but no GPU is visible: running on CPU (CUDA_VISIBLE_DEVICES='')")
        return Lease([], [])
    if n > len(pool):
        raise DeviceError(f"{n} GPU(s) requested but only {len(pool)} visible ({','.join(pool)})")

    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _make_lock_dir(lock_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting_logged = False
    while True:
        held: list[tuple[str, int]] = []
        for device in pool:
            fd = _open_lock(lock_dir, device)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                continue
            held.append((device, fd))
            if len(held) == n:
                lease = Lease([d for d, _ in held], [f for _, f in held])
                logger(f"acquired GPU(s) {lease.cuda_visible_devices} of {','.join(pool)} (locks in {lock_dir})")
                return lease
        # Too few free: let go of the partial set (no hold-and-wait, hence no deadlock) and retry.
        for _, fd in held:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeviceError(f"timed out after {timeout:g} s waiting for {n} free GPU(s) of {','.join(pool)}")
        if not waiting_logged:
            logger(f"waiting for {n} free GPU(s): {len(pool) - len(held)} of {','.join(pool)} in use")
            waiting_logged = True
        time.sleep(poll)


@contextmanager
def acquire(n: int, *, set_env: bool = True, **kwargs) -> Iterator[Lease]:
    """Hold n GPUs for the block (see take()); sets CUDA_VISIBLE_DEVICES inside it unless set_env=False."""
    lease = take(n, **kwargs)
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if set_env:
        os.environ["CUDA_VISIBLE_DEVICES"] = lease.cuda_visible_devices
    try:
        yield lease
    finally:
        if set_env:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous
        lease.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devices",
        description="Run COMMAND on N GPUs that no other wrapped command holds (CPU when N is 0 or no GPU exists).",
    )
    parser.add_argument("--gpus", type=int, required=True, metavar="N", help="GPUs to hold (0: run on CPU)")
    parser.add_argument("--lock-dir", type=Path, help=f"lock files (default ${LOCK_DIR_ENV} or {DEFAULT_LOCK_DIR})")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds of waiting (default: wait)")
    parser.add_argument("--strict", action="store_true", help="fail instead of falling back to CPU without GPUs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m pipeline.devices --gpus N -- COMMAND ARGS...)")
    try:
        lease = take(args.gpus, lock_dir=args.lock_dir, timeout=args.timeout, strict=args.strict)
    except DeviceError as err:
        log(f"error: {err}")
        return 2
    os.environ["CUDA_VISIBLE_DEVICES"] = lease.cuda_visible_devices
    lease.make_inheritable()
    try:
        os.execvp(command[0], command)  # the command now holds the locks; they go when it exits
    except OSError as err:
        log(f"error: cannot run {command[0]!r}: {err}")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
