"""The patched fairseq 0.12.2 build works on Python 3.11 / torch 2.13 / numpy 2."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


# ---------------------------------------------------------------------------------------------
# Patch 9: checkpoint writes are atomic (a temporary file beside the checkpoint, then os.replace).


def _failing_midway(real_write, fail_times: int):
    """A writer that writes half of what real_write would, then raises, fail_times times; then real_write."""
    calls = []

    def write(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > fail_times:
            return real_write(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_write(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        raise OSError(28, "No space left on device (injected)")

    return write, calls


def test_failed_checkpoint_save_keeps_the_old_file(tmp_path: Path, monkeypatch):
    from fairseq import checkpoint_utils

    path = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save({"model": {"w": torch.zeros(1000)}}, str(path))
    before = path.read_bytes()
    write, calls = _failing_midway(torch.save, fail_times=3)
    monkeypatch.setattr(torch, "save", write)
    with pytest.raises(OSError, match="injected"):
        checkpoint_utils.torch_persistent_save({"model": {"w": torch.ones(1000)}}, str(path))
    assert len(calls) == 3  # fairseq's three attempts
    assert path.read_bytes() == before  # the old checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]  # no temporary file left


def test_checkpoint_save_retry_overwrites_the_partial_attempt(tmp_path: Path, monkeypatch):
    from fairseq import checkpoint_utils

    path = tmp_path / "checkpoint_1_20.pt"
    write, calls = _failing_midway(torch.save, fail_times=1)
    monkeypatch.setattr(torch, "save", write)
    checkpoint_utils.torch_persistent_save({"model": {"w": torch.arange(1000.0)}}, str(path))
    monkeypatch.undo()
    assert len(calls) == 2
    # unpatched, the retry appended a whole checkpoint to the half-written one: an unreadable file
    assert torch.equal(torch.load(path, weights_only=False)["model"]["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_20.pt"]


class _Trainer:
    """What fairseq's save_checkpoint asks of a trainer, saving a small state."""

    data_parallel_rank = 0
    should_save_checkpoint_on_current_rank = True
    always_call_state_dict_during_save_checkpoint = False
    checkpoint_suffix = ""

    def __init__(self, updates: int):
        self.updates = updates

    def consolidate_optimizer(self):
        pass

    def get_num_updates(self):
        return self.updates

    def save_checkpoint(self, filename, extra_state):
        from fairseq import checkpoint_utils

        state = {"model": {"w": torch.full((1000,), float(self.updates))}, "extra_state": extra_state,
                 "optimizer_history": [{"num_updates": self.updates}]}
        checkpoint_utils.torch_persistent_save(state, filename)


class _EpochIterator:
    epoch = 1

    def end_of_epoch(self):
        return False

    def state_dict(self):
        return {"epoch": 1}


def test_save_checkpoint_copies_atomically(tmp_path: Path, monkeypatch):
    """A copy that dies midway (a kill while fairseq copies the interval checkpoint to checkpoint_last.pt)
    leaves the previous checkpoint_last.pt whole; the next save replaces it."""
    import shutil

    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import CheckpointConfig

    monkeypatch.delattr(checkpoint_utils.save_checkpoint, "best", raising=False)
    cfg = CheckpointConfig(save_dir=str(tmp_path), save_interval_updates=10, keep_interval_updates=5)
    checkpoint_utils.save_checkpoint(cfg, _Trainer(10), _EpochIterator(), None)
    last = tmp_path / "checkpoint_last.pt"
    assert last.read_bytes() == (tmp_path / "checkpoint_1_10.pt").read_bytes()
    before = last.read_bytes()

    real_copy = shutil.copyfileobj
    copies = []

    def copy_half(src, dst, length=0):
        copies.append(dst.name)
        data = src.read()
        dst.write(data[: len(data) // 2])
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half)
    with pytest.raises(OSError, match="injected"):
        checkpoint_utils.save_checkpoint(cfg, _Trainer(20), _EpochIterator(), None)
    assert copies == [str(last) + ".tmp"]
    assert last.read_bytes() == before  # update 10, whole
    assert torch.load(tmp_path / "checkpoint_1_20.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] == 20
    assert not list(tmp_path.glob("*.tmp"))

    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    checkpoint_utils.save_checkpoint(cfg, _Trainer(30), _EpochIterator(), None)
    assert last.read_bytes() == (tmp_path / "checkpoint_1_30.pt").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_indexed_dataset_builder_keeps_sizes_compact_and_writes_the_same_index(tmp_path: Path):
    """Patch 13: the sizes of a binarised corpus are an int32 array, and the index is the format fairseq reads."""
    from array import array

    from fairseq.data.indexed_dataset import MMapIndexedDataset, MMapIndexedDatasetBuilder

    rng = np.random.default_rng(0)
    items = [torch.from_numpy(rng.integers(4, 1000, int(n))) for n in rng.integers(1, 40, 600)]
    part = MMapIndexedDatasetBuilder(str(tmp_path / "part.bin"), dtype=np.uint16)
    for item in items[200:450]:
        part.add_item(item)
    part.finalize(str(tmp_path / "part.idx"))
    builder = MMapIndexedDatasetBuilder(str(tmp_path / "all.bin"), dtype=np.uint16)
    for item in items[:200]:
        builder.add_item(item)
    builder.merge_file_(str(tmp_path / "part"))  # as fairseq-preprocess merges its workers' outputs
    for item in items[450:]:
        builder.add_item(item)
    assert isinstance(builder._sizes, array) and builder._sizes.itemsize == 4
    builder.finalize(str(tmp_path / "all.idx"))

    sizes = np.array([len(item) for item in items], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes.astype(np.int64) * 2)[:-1]])
    expected = (MMapIndexedDataset.Index._HDR_MAGIC + struct.pack("<Q", 1) + struct.pack("<B", 8)
                + struct.pack("<Q", len(sizes)) + sizes.tobytes() + pointers.tobytes())
    assert (tmp_path / "all.idx").read_bytes() == expected
    dataset = MMapIndexedDataset(str(tmp_path / "all"))
    assert len(dataset) == len(items)
    for i in (0, 199, 200, 449, 450, 599):
        assert dataset[i].tolist() == items[i].tolist()

    many = rng.integers(1, 200, 200_000).astype(np.int32)  # more than one block of pointers
    with MMapIndexedDataset.Index.writer(str(tmp_path / "many.idx"), np.uint16) as index:
        index.write(array("i", many.tobytes()))
    index = MMapIndexedDataset.Index(str(tmp_path / "many.idx"))
    assert np.array_equal(index.sizes, many)
    assert np.array_equal(index._pointers, np.concatenate([[0], np.cumsum(many.astype(np.int64) * 2)[:-1]]))


def test_amp_on_the_cpu_is_bfloat16_autocast(smoke_data: Path, tmp_path: Path):
    """Patch 14: --cpu --amp trains with bfloat16 autocast (it was a silent no-op): the same run in float32 and
    with --amp ends at slightly different weights (bfloat16 products round differently), not far apart, and the
    checkpoint keeps float32 weights."""
    from conftest import data_dir, train_tiny
    from fairseq import checkpoint_utils

    runs = {}
    for name, extra in (("fp32", []), ("fp32_again", []), ("amp", ["--amp"])):
        state = checkpoint_utils.load_checkpoint_to_cpu(
            str(train_tiny(data_dir(smoke_data) / "bin", tmp_path / name, max_update=12, extra=extra)))
        runs[name] = state["model"]
    for key, weight in runs["amp"].items():
        assert weight.dtype == runs["fp32"][key].dtype
        assert torch.isfinite(weight).all()

    def largest_difference(a: str, b: str) -> float:
        # weights and biases (the sinusoidal embedding's _float_tensor buffer is uninitialised memory)
        return max((runs[a][k] - runs[b][k]).abs().max().item() for k in runs[a] if k.endswith(("weight", "bias")))

    rerun, amp = largest_difference("fp32_again", "fp32"), largest_difference("amp", "fp32")
    print(f"largest weight difference: float32 rerun {rerun:.2e}, --amp {amp:.2e}")
    assert amp > 10 * rerun  # more than float32's run-to-run noise (reductions in another order)
    assert amp < 0.05  # 12 Adam steps of at most about lr (3e-3) each
