"""Training survives a damaged checkpoint_last.pt (a kill while fairseq copied it): the rerun resumes from the
newest readable checkpoint beside it, keeps the damaged file aside, or fails in one line naming the file."""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, data_dir

from pipeline import checkpoints
from pipeline.errors import ModelError
from pipeline.train import report_resume

# torch's reason varies with where the file ends (the zip reader's "failed finding central directory",
# "[Errno 22] Invalid argument", "Ran out of input"): the message names the file, says what is wrong, then why.
DAMAGED = "damaged or truncated checkpoint \\([^()]+\\)"


def damaged(path: Path) -> str:
    """A regular expression for the message on a damaged checkpoint at path."""
    return re.escape(f"{path}: ") + DAMAGED


def fake_checkpoint(path: Path, updates: int) -> Path:
    torch.save({"model": {"w": torch.full((2000,), float(updates))}, "extra_state": {"train_iterator": {"epoch": 1}},
                "optimizer_history": [{"num_updates": updates}]}, path)
    return path


def truncate(path: Path) -> int:
    """Cut the file to half its size, as a copy killed midway leaves it; returns the new size."""
    size = path.stat().st_size // 2
    os.truncate(path, size)
    return size


def test_load_names_the_file_of_any_unreadable_checkpoint(tmp_path: Path):
    path = fake_checkpoint(tmp_path / "checkpoint_last.pt", 5)
    truncate(path)
    with pytest.raises(checkpoints.DamagedCheckpointError) as err:
        checkpoints.load(path)
    assert re.fullmatch(damaged(path), str(err.value))
    # Random bytes make the unpickler raise all sorts: these seeds gave MemoryError (43, 10 bytes) and
    # OverflowError (86), which once escaped as "cannot load"; the others a spread of lengths.
    noise = [random.Random(seed).randbytes(n) for seed, n in ((43, 10), (86, 300), (3, 5000), (4, 1), (5, 2))]
    for content in (b"", b"not a checkpoint\n", *noise):
        path.write_bytes(content)
        with pytest.raises(checkpoints.DamagedCheckpointError, match=f"^{damaged(path)}$"):
            checkpoints.load(path)
    with pytest.raises(ModelError, match=f"^{tmp_path / 'missing.pt'}: checkpoint not found$"):
        checkpoints.load(tmp_path / "missing.pt")
    torch.save([1, 2], path)
    with pytest.raises(checkpoints.DamagedCheckpointError, match="not a fairseq training checkpoint"):
        checkpoints.load_training_state(path)


def test_damaged_last_falls_back_to_the_newest_readable_checkpoint(tmp_path: Path, caplog):
    fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10)
    fake_checkpoint(tmp_path / "checkpoint_2_20.pt", 20)
    newest = fake_checkpoint(tmp_path / "checkpoint_2_30.pt", 30)
    truncate(newest)  # damaged too: skipped, with a warning
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 20)  # as new as checkpoint_2_20.pt: numbered first
    last = fake_checkpoint(tmp_path / "checkpoint_last.pt", 30)
    damaged_size = truncate(last)
    damaged_bytes = last.read_bytes()
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        report_resume(tmp_path)
    assert re.search(damaged(newest) + ": not used", caplog.text)
    assert re.search(damaged(last) + re.escape(": kept as checkpoint_last.pt.damaged; resuming from "
                                               "checkpoint_2_20.pt instead (update 20)"), caplog.text)
    assert f"resuming from {last} at update 20 (epoch 1)" in caplog.text
    assert last.read_bytes() == (tmp_path / "checkpoint_2_20.pt").read_bytes()
    aside = tmp_path / "checkpoint_last.pt.damaged"
    assert aside.stat().st_size == damaged_size and aside.read_bytes() == damaged_bytes
    assert newest.exists() and not list(tmp_path.glob("*.tmp"))  # nothing deleted, nothing left over

    # damaged again: the first file kept aside stays, the second gets its own name
    truncate(last)
    report_resume(tmp_path)
    assert (tmp_path / "checkpoint_last.pt.damaged.2").exists() and aside.read_bytes() == damaged_bytes


def test_best_checkpoint_is_used_when_it_holds_more_updates(tmp_path: Path, caplog):
    """At an epoch end under --no-epoch-checkpoints fairseq saves best and last only: best is then the newest."""
    fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10)
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 14)
    truncate(fake_checkpoint(tmp_path / "checkpoint_last.pt", 14))
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        report_resume(tmp_path)
    assert "resuming from checkpoint_best.pt instead (update 14)" in caplog.text


def test_nothing_readable_fails_naming_the_file_and_moves_nothing(tmp_path: Path):
    truncate(fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10))
    last = fake_checkpoint(tmp_path / "checkpoint_last.pt", 10)
    truncate(last)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ModelError) as err:
        report_resume(tmp_path)
    assert re.fullmatch(damaged(last) + re.escape(f"; nothing to resume from in {tmp_path} (checkpoint_1_10.pt "
                                                  "unreadable too): move the directory aside to train from scratch"),
                        str(err.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "checkpoint_1_10.pt").unlink()
    with pytest.raises(ModelError, match=re.escape(f"; nothing to resume from in {tmp_path} (no other checkpoint)")):
        report_resume(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]


# ---------------------------------------------------------------------------------------------
# The real CLI: train, damage checkpoint_last.pt as a killed copy leaves it, rerun.


def train_cli(data: Path, save_dir: Path, max_update: int, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(data), "--save-dir", str(save_dir),
           "--output", str(save_dir.parent / "model.pt"), "--metrics", str(save_dir.parent / "metrics.jsonl"),
           "--preset", "tiny", "--",
           "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--seed", "1",
           "--max-tokens", "2000", "--max-update", str(max_update), "--save-interval-updates", "10",
           "--validate-interval-updates", "10", "--num-workers", "0", "--log-interval", "10"]
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, env=env)


def test_rerun_resumes_from_the_interval_checkpoint_after_a_killed_copy(smoke_data: Path, tmp_path: Path):
    save_dir = tmp_path / "model" / "checkpoints"
    first = train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=30)
    assert first.returncode == 0, first.stderr[-3000:]
    # fairseq saved update 30 as an interval checkpoint, then copied it to checkpoint_last.pt: kill that copy
    (interval,) = save_dir.glob("checkpoint_*_30.pt")
    last = save_dir / "checkpoint_last.pt"
    assert checkpoints.num_updates(checkpoints.load(last)) == 30
    damaged_size = truncate(last)
    (save_dir.parent / "model.pt").unlink()  # Snakemake removes a rerun job's output first

    second = train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=40)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stderr
    assert re.search(damaged(last) + re.escape(f": kept as checkpoint_last.pt.damaged; resuming from {interval.name} "
                                               "instead (update 30)"), log)
    assert f"resuming from {last} at update 30" in log
    assert "@ 30 updates)" in log  # fairseq's own "Loaded checkpoint ... (epoch E @ 30 updates)"
    assert "training from scratch" not in log
    assert checkpoints.num_updates(checkpoints.load(save_dir.parent / "model.pt")) == 40
    assert (save_dir / "checkpoint_last.pt.damaged").stat().st_size == damaged_size
    assert checkpoints.num_updates(checkpoints.load(last)) == 40


def test_rerun_with_no_readable_checkpoint_fails_in_one_line(smoke_data: Path, tmp_path: Path):
    save_dir = tmp_path / "model" / "checkpoints"
    assert train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=10).returncode == 0
    for path in save_dir.glob("checkpoint*.pt"):
        truncate(path)
    (save_dir.parent / "model.pt").unlink()
    second = train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=20)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    interval = next(save_dir.glob("checkpoint_*_10.pt")).name
    assert re.fullmatch("error: " + damaged(save_dir / "checkpoint_last.pt") + re.escape(
        f"; nothing to resume from in {save_dir} ({interval}, checkpoint_best.pt unreadable too): move the "
        "directory aside to train from scratch"), errors[0])
    assert "Traceback" not in second.stderr
    assert not (save_dir.parent / "model.pt").exists() and (save_dir / "checkpoint_last.pt").exists()


# Imported by every Python process started with its directory on PYTHONPATH: fairseq-train copies a checkpoint
# with shutil.copyfile (fairseq as published) or shutil.copyfileobj (patched, into checkpoint_last.pt.tmp).
KILL_AT_COPY = """
import os, shutil, signal

_SRC = os.environ["KILL_AT_COPY"]  # the end of the checkpoint's name being copied to checkpoint_last.pt
_copyfile, _copyfileobj = shutil.copyfile, shutil.copyfileobj


def _die_halfway(src, dst):
    data = src.read()
    dst.write(data[: len(data) // 2])
    dst.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def copyfile(src, dst, *, follow_symlinks=True):
    if str(src).endswith(_SRC) and "checkpoint_last" in str(dst):
        with open(src, "rb") as s, open(dst, "wb") as d:
            _die_halfway(s, d)
    return _copyfile(src, dst, follow_symlinks=follow_symlinks)


def copyfileobj(fsrc, fdst, length=0):
    if str(getattr(fsrc, "name", "")).endswith(_SRC) and "checkpoint_last" in str(getattr(fdst, "name", "")):
        _die_halfway(fsrc, fdst)
    return _copyfileobj(fsrc, fdst, length)


shutil.copyfile, shutil.copyfileobj = copyfile, copyfileobj
"""


def test_training_killed_while_copying_checkpoint_last_finishes_on_rerun(smoke_data: Path, tmp_path: Path):
    """A real kill (SIGKILL) of fairseq-train halfway through copying update 20 to checkpoint_last.pt. With the
    patched fairseq (atomic copies) checkpoint_last.pt still holds update 10 and the run resumes there; with
    fairseq as published it is truncated and the run resumes from the interval checkpoint of update 20."""
    import fairseq

    from pipeline.build_fairseq import LOCAL_VERSION

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_COPY)
    save_dir = tmp_path / "model" / "checkpoints"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p),
           "KILL_AT_COPY": "_20.pt"}
    killed = train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=30, env=env)
    assert killed.returncode == 1 and "fairseq-train failed with exit status -9" in killed.stderr, killed.stderr[-3000:]
    assert not (save_dir.parent / "model.pt").exists()
    (interval,) = save_dir.glob("checkpoint_*_20.pt")
    last = save_dir / "checkpoint_last.pt"
    patched = fairseq.__version__ == LOCAL_VERSION
    if patched:  # the half copy is a temporary file; checkpoint_last.pt is whole
        half = (save_dir / "checkpoint_last.pt.tmp").stat().st_size
        assert 0 < half < interval.stat().st_size
        assert checkpoints.num_updates(checkpoints.load(last)) == 10

    rerun = train_cli(data_dir(smoke_data) / "bin", save_dir, max_update=30)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if patched:
        assert "damaged" not in rerun.stderr
        assert f"resuming from {last} at update 10" in rerun.stderr
    else:
        assert re.search(damaged(last) + re.escape(f": kept as checkpoint_last.pt.damaged; resuming from "
                                                   f"{interval.name} instead (update 20)"), rerun.stderr)
        assert f"resuming from {last} at update 20" in rerun.stderr
    assert checkpoints.num_updates(checkpoints.load(save_dir.parent / "model.pt")) == 30
