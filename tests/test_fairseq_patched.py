"""The patched fairseq 0.12.2 build works on Python 3.11 / torch 2.13 / numpy 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import build_fairseq


def test_imports_with_local_version():
    import fairseq

    assert fairseq.__version__ == build_fairseq.LOCAL_VERSION
    assert np.__version__.startswith("2.")
    assert torch.__version__.startswith("2.13")


def test_config_mutation_does_not_leak_between_instances():
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.transformer import TransformerConfig

    first = FairseqConfig()
    first.common.seed = 1234
    first.optimization.lr = [0.5]
    second = FairseqConfig()
    assert second.common.seed == 1
    assert second.optimization.lr == [0.25]
    assert first.common is not second.common

    tcfg = TransformerConfig()
    tcfg.encoder.layers = 1
    assert TransformerConfig().encoder.layers == 6


def test_hydra_init_registers_every_group():
    from fairseq.dataclass.initialize import hydra_init
    from hydra.core.config_store import ConfigStore

    hydra_init("test_cfg")
    repo = ConfigStore.instance().repo
    for group in ("common", "checkpoint", "generation", "ema"):
        assert f"{group}.yaml" in repo


def test_checkpoint_round_trip(tiny_teacher: Path, tmp_path: Path):
    """A checkpoint written by fairseq-train loads, re-saves and loads again unchanged."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(tiny_teacher))
    assert state["optimizer_history"][-1]["num_updates"] > 0
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_teacher)])
    copy = tmp_path / "copy.pt"
    checkpoint_utils.torch_persistent_save(state, str(copy))
    reloaded, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(copy)])
    original = models[0].state_dict()
    for key, value in reloaded[0].state_dict().items():
        if key.endswith("_float_tensor"):  # an uninitialised placeholder buffer in fairseq
            continue
        assert torch.equal(original[key], value), key
    assert cfg.task._name == "translation"


def test_build_script_refuses_other_sources(tmp_path: Path):
    fake = tmp_path / "fairseq-0.12.3.tar.gz"
    fake.write_bytes(b"not fairseq 0.12.2")
    proc = subprocess.run(
        [sys.executable, build_fairseq.__file__, "--out", str(tmp_path / "out"), "--sdist", str(fake)],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "applies to fairseq 0.12.2 only" in proc.stderr
