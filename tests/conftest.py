"""Shared fixtures: the real Snakefile on a slice of Multi30k, and small helpers to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MIRROR = (REPO.parent / "shared" / "data" / "multi30k").resolve()
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# Every Snakemake process loads the installed Slurm executor plugin, which runs `scontrol show config`
# as it is imported. Where the Slurm packages are installed but no controller answers (a CI image with
# them, this machine after tests/test_slurm.py stopped its cluster), scontrol retries for 9 s before
# it gives up: 9 s more for each Snakemake run of the suite and for importing the plugin here. An empty
# config makes scontrol fail at once. The local runs need no Slurm; the Slurm tests (slurm_cluster)
# set the real config for their runs and jobs.
os.environ["SLURM_CONF"] = os.devnull


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(workdir: Path, overrides: dict | None = None) -> Path:
    """config/smoke.yaml with the mirror made absolute, plus overrides, written into workdir."""
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg = deep_merge(cfg, {"data": {"mirror": str(MIRROR)}})
    cfg = deep_merge(cfg, overrides or {})
    path = workdir / "test_config.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def workflow_config(config: Path | None = None) -> dict:
    """The config as the Snakefile sees it: config/config.yaml with the configfile merged in key by key."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_merge(cfg, yaml.safe_load(config.read_text()) or {}) if config is not None else cfg


def stages(workdir: Path, config: Path | None = None):
    """The keyed stage directories (pipeline.settings.Layout) of a run in workdir; config: its configfile
    (default: workdir/test_config.yaml, what write_config(workdir) writes)."""
    from pipeline.settings import stage_layout

    return stage_layout(workflow_config(config or workdir / "test_config.yaml"), root=workdir)


def data_dir(workdir: Path, config: Path | None = None) -> Path:
    """The data stage's directory of a run in workdir (work/data/<src>-<tgt>-<key>)."""
    return workdir / stages(workdir, config).data_dir


def distill_dir(workdir: Path, config: Path | None = None) -> Path:
    """The distillation's directory of a run in workdir (work/distill/<selection>_beam<N>-<key>)."""
    return workdir / stages(workdir, config).distill_dir


def model_dir(workdir: Path, name: str, config: Path | None = None) -> Path:
    """A model's directory of a run in workdir (work/models/<name>-<key>)."""
    return workdir / stages(workdir, config).model_dir(name)


def results_dir(workdir: Path, config: Path | None = None) -> Path:
    """The experiment's results of a run in workdir (results/<experiment>)."""
    return workdir / stages(workdir, config).results_dir


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the real Snakefile in workdir; returns the finished process (stdout and stderr joined)."""
    cmd = [*SNAKEMAKE, *args, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if config is not None:  # last: --configfile takes every word after it
        cmd += ["--configfile", str(config)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A working directory where `snakemake data` has run on the smoke slice."""
    if not MIRROR.is_dir():
        pytest.skip(f"Multi30k mirror not found at {MIRROR}")
    workdir = tmp_path_factory.mktemp("smoke_data")
    snakemake(workdir, "data", config=write_config(workdir))
    return workdir


TINY_ARCH = [
    "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def train_tiny(bin_dir: Path, save_dir: Path, max_update: int = 40, extra: list[str] | None = None) -> Path:
    """fairseq-train a tiny transformer on binarised data; returns checkpoint_last.pt."""
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", str(bin_dir), *TINY_ARCH,
        "--task", "translation", "--cpu", "--seed", "1",
        "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", "2000", "--max-update", str(max_update),
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "10",
        *(extra or []),
    ]
    subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def tiny_teacher(smoke_data, tmp_path_factory) -> Path:
    """A tiny transformer trained for a few updates on the smoke data: its checkpoint path."""
    return train_tiny(data_dir(smoke_data) / "bin", tmp_path_factory.mktemp("tiny_teacher"))
