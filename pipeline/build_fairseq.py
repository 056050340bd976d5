"""Build a wheel of fairseq 0.12.2 that works on Python 3.11, torch 2.13 and numpy 2.

Besides those compatibility fixes, one reliability fix: fairseq's checkpoint writes become atomic
(patch 9), so a kill mid-save never leaves a truncated checkpoint_last.pt.

Standard library only: this runs before the virtual environment has anything in it.
The sdist is pinned by version and sha256; every patch must match the 0.12.2 source exactly
once, so a different source fails loudly instead of being half-patched.

    python pipeline/build_fairseq.py --out dist/   # prints the wheel's path
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "0.12.2"
LOCAL_VERSION = f"{VERSION}+py311.5"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/30/36/"
    "db42846570f479ac859be3b48d8b47f2ae9b0b9c77487a512f2f2ecbcb6b/fairseq-0.12.2.tar.gz"
)
SDIST_SHA256 = "34f1b18426bf3844714534162f065ab733e049597476daa35fffb4d06a92b524"

_CONFIGS = [
    "CommonConfig",
    "CommonEvalConfig",
    "DistributedTrainingConfig",
    "DatasetConfig",
    "OptimizationConfig",
    "CheckpointConfig",
    "FairseqBMUFConfig",
    "GenerationConfig",
    "EvalLMConfig",
    "InteractiveConfig",
    "EMAConfig",
]
_FIELD_NAMES = [
    "common",
    "common_eval",
    "distributed_training",
    "dataset",
    "optimization",
    "checkpoint",
    "bmuf",
    "generation",
    "eval_lm",
    "interactive",
    "ema",
]

# (file, old, new): each `old` must occur exactly once in the 0.12.2 source.
PATCHES: list[tuple[str, str, str]] = [
    # 1. Python 3.11 rejects dataclass instances as field defaults; default_factory gives each
    #    config its own instance (default=CommonConfig, as a PyPI fork does, shares state).
    *[
        (
            "fairseq/dataclass/configs.py",
            f"    {name}: {cls} = {cls}()\n",
            f"    {name}: {cls} = field(default_factory={cls})\n",
        )
        for name, cls in zip(_FIELD_NAMES, _CONFIGS, strict=True)
    ],
    (
        "fairseq/models/transformer/transformer_config.py",
        "    encoder: EncDecBaseConfig = EncDecBaseConfig()\n",
        "    encoder: EncDecBaseConfig = field(default_factory=EncDecBaseConfig)\n",
    ),
    (
        "fairseq/models/transformer/transformer_config.py",
        "    decoder: DecoderConfig = DecoderConfig()\n",
        "    decoder: DecoderConfig = field(default_factory=DecoderConfig)\n",
    ),
    (
        "fairseq/models/transformer/transformer_config.py",
        "field(default=QuantNoiseConfig())",
        "field(default_factory=QuantNoiseConfig)",
    ),
    # 2. hydra_init read Field.default, which is MISSING once a field has a default_factory.
    (
        "fairseq/dataclass/initialize.py",
        "        v = FairseqConfig.__dataclass_fields__[k].default\n",
        "        f = FairseqConfig.__dataclass_fields__[k]\n"
        "        v = f.default\n"
        "        if v is MISSING and f.default_factory is not MISSING:\n"
        "            v = f.default_factory()\n",
    ),
    (
        "fairseq/dataclass/initialize.py",
        "import logging\n",
        "import logging\nfrom dataclasses import MISSING\n",
    ),
    # 3 and 7. hydra-core 1.0 / omegaconf 2.0 fail on 3.11 and newer pip; torchaudio is a CUDA
    #    build on PyPI that fails to import on CPU machines and only speech tasks use it.
    (
        "setup.py",
        '            "hydra-core>=1.0.7,<1.1",\n            "omegaconf<2.1",\n',
        '            "hydra-core>=1.3.2,<1.4",\n            "omegaconf>=2.3,<2.4",\n',
    ),
    ("setup.py", '            "torchaudio>=0.8.0",\n', ""),
    # 8. The sdist lacks the libnat/libbase C++ sources; building them against torch fails.
    ("setup.py", "    from torch.utils import cpp_extension\n", "    raise ImportError  # no libnat/libbase sources in the sdist\n"),
    # 4. torch >= 2.6 defaults to weights_only=True, which cannot unpickle fairseq's argparse args.
    (
        "fairseq/checkpoint_utils.py",
        'state = torch.load(f, map_location=torch.device("cpu"))',
        'state = torch.load(f, map_location=torch.device("cpu"), weights_only=False)',
    ),
    (
        "fairseq/checkpoint_utils.py",
        "        new_state = torch.load(\n            f,\n",
        "        new_state = torch.load(\n            f,\n            weights_only=False,\n",
    ),
    # 5. The 0.12.2-only BetterTransformer inference path fails with "Mask Type should be defined".
    (
        "fairseq/modules/transformer_layer.py",
        "        self.can_use_fastpath = (\n            not self.normalize_before\n",
        "        self.can_use_fastpath = False and (\n            not self.normalize_before\n",
    ),
    # 6. numpy 2 removed np.compat, np.int, np.float and percentile's `interpolation=`.
    ("fairseq/data/token_block_dataset.py", "dtype=np.compat.long", "dtype=np.int64"),
    ("fairseq/data/language_pair_dataset.py", "otypes=[np.compat.long]", "otypes=[np.int64]"),
    ("fairseq/data/data_utils.py", "                    np.int,\n", "                    np.int64,\n"),
    ("fairseq/data/data_utils.py", 'interpolation="lower"', 'method="lower"'),
    ("fairseq/modules/dynamic_crf_layer.py", 'np.float("inf")', 'float("inf")'),
    # 9. Checkpoint writes are not atomic: save_checkpoint writes the first checkpoint and then
    #    PathManager.copy (shutil.copyfile without ioPath) writes the others, checkpoint_last.pt
    #    included, in place, so a kill or preemption mid-copy leaves a truncated checkpoint_last.pt
    #    that every resume then fails on. And when torch.save fails midway, its retry appends a second
    #    copy to the partial bytes, a file torch cannot read, which the first save then renames into
    #    place. Fix: every local checkpoint write (first save and copies) goes to <name>.tmp in the
    #    same directory, is flushed and fsynced, then os.replace'd over <name> (removed on failure); a
    #    retry rewinds and truncates first. Remote (ioPath) paths keep fairseq's own behaviour.
    ("fairseq/checkpoint_utils.py", "import re\nimport time\n", "import re\nimport shutil\nimport time\n"),
    (
        "fairseq/checkpoint_utils.py",
        "                assert PathManager.copy(\n"
        "                    checkpoints[0], cp, overwrite=True\n"
        '                ), f"Failed to copy {checkpoints[0]} to {cp}"\n',
        "                _copy_checkpoint_atomically(checkpoints[0], cp)\n",
    ),
    (
        "fairseq/checkpoint_utils.py",
        '            with PathManager.open(filename + ".tmp", "wb") as f:\n'
        "                _torch_persistent_save(obj, f)\n"
        '            PathManager.rename(filename + ".tmp", filename)\n',
        "            _write_atomically(filename, lambda f: _torch_persistent_save(obj, f))\n",
    ),
    (
        "fairseq/checkpoint_utils.py",
        "def _torch_persistent_save(obj, f):\n",
        "def _write_atomically(filename, write):\n"
        '    """Call write(f) on a temporary file beside filename, then replace filename with it.\n'
        "\n"
        "    filename is never a partial file: it holds its old content or the complete new one.\n"
        '    """\n'
        '    tmp = filename + ".tmp"\n'
        "    try:\n"
        '        with open(tmp, "wb") as f:\n'
        "            write(f)\n"
        "            f.flush()\n"
        "            os.fsync(f.fileno())\n"
        "        os.replace(tmp, filename)\n"
        "    except BaseException:\n"
        "        with contextlib.suppress(OSError):\n"
        "            os.remove(tmp)\n"
        "        raise\n"
        "\n"
        "\n"
        "def _copy_checkpoint_atomically(src, dst):\n"
        "    if not PathManager.supports_rename(dst):\n"
        "        assert PathManager.copy(src, dst, overwrite=True), f\"Failed to copy {src} to {dst}\"\n"
        "        return\n"
        '    with open(src, "rb") as source:\n'
        "        _write_atomically(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))\n"
        "\n"
        "\n"
        "def _torch_persistent_save(obj, f):\n",
    ),
    (
        "fairseq/checkpoint_utils.py",
        "    for i in range(3):\n"
        "        try:\n"
        "            return torch.save(obj, f)\n",
        '    start = f.tell() if getattr(f, "seekable", lambda: False)() else None\n'
        "    for i in range(3):\n"
        "        try:\n"
        "            if i > 0 and start is not None:\n"
        "                # overwrite the failed attempt's partial bytes instead of appending\n"
        "                f.seek(start)\n"
        "                f.truncate()\n"
        "            return torch.save(obj, f)\n",
    ),
    # 10. Distributed training on CPU (gloo, e.g. 2 CPU tasks under srun): DDP accepts device_ids only
    #    for GPU modules ("device_ids and output_device arguments only work with single-device/multiple-
    #    device GPU modules or CPU modules, but got device_ids [0]"); a CPU module needs None.
    (
        "fairseq/models/distributed_fairseq_model.py",
        "            device_ids=[args.device_id],\n            output_device=args.device_id,\n",
        "            device_ids=None if torch.device(device).type == \"cpu\" else [args.device_id],\n"
        "            output_device=None if torch.device(device).type == \"cpu\" else args.device_id,\n",
    ),
    # 11. Distributed training (CPU or GPU): the encoder layers' inference fast-path weight copies
    #     (in_proj_weight ... fc2_bias, unused since fix 5) are parameters that never get a gradient,
    #     and DDP stops on them ("Expected to have finished reduction in the prior iteration ...
    #     parameters that were not used in producing loss"). DDP is told to ignore them, by name; they
    #     stay in the state dict and the optimizer (no gradient: never updated), so checkpoints and
    #     resumed optimizer states are unchanged, and no --find-unused-parameters graph walk is needed.
    (
        "fairseq/models/distributed_fairseq_model.py",
        "logger = logging.getLogger(__name__)\n",
        "logger = logging.getLogger(__name__)\n"
        "\n"
        "_FASTPATH_COPIES = (\n"
        "    \"in_proj_weight\", \"in_proj_bias\", \"out_proj_weight\", \"out_proj_bias\",\n"
        "    \"fc1_weight\", \"fc1_bias\", \"fc2_weight\", \"fc2_bias\",\n"
        ")\n"
        "\n"
        "\n"
        "def _ignore_fastpath_copies(model):\n"
        "    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase\n"
        "\n"
        "    names = [\n"
        "        f\"{prefix}.{name}\"\n"
        "        for prefix, module in model.named_modules()\n"
        "        if isinstance(module, TransformerEncoderLayerBase)\n"
        "        for name in _FASTPATH_COPIES\n"
        "        if name in module._parameters\n"
        "    ]\n"
        "    if names:\n"
        "        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)\n",
    ),
    (
        "fairseq/models/distributed_fairseq_model.py",
        '    elif args.ddp_backend in {"c10d", "pytorch_ddp"}:\n        wrapped_model = DistributedDataParallel(\n',
        '    elif args.ddp_backend in {"c10d", "pytorch_ddp"}:\n        _ignore_fastpath_copies(model)\n'
        "        wrapped_model = DistributedDataParallel(\n",
    ),
    # 12. Distributed resume: rank 0 loads checkpoint_last.pt and broadcasts it to the other ranks,
    #     which unpickle it with torch.load: under torch >= 2.6 (weights_only=True) rank 1 fails on the
    #     checkpoint's omegaconf DictConfig ("Weights only load failed ... Unsupported global"), as fix 4.
    (
        "fairseq/distributed/utils.py",
        '        obj = torch.load(buffer, map_location="cpu")\n',
        '        obj = torch.load(buffer, map_location="cpu", weights_only=False)\n',
    ),
    # 13. Binarising memory that grows with the corpus: fairseq-preprocess's index builder kept one Python
    #     object per sentence (a list of numpy scalars, about 40 bytes each, merged from every worker),
    #     then a second Python list of pointers to write the index: hundreds of MB at 10M sentences. The
    #     sizes now sit in an array of int32 (4 bytes a sentence, as the index stores them) and the
    #     pointers are written in blocks. The index file is byte-identical.
    ("fairseq/data/indexed_dataset.py", "import shutil\nimport struct\n", "import shutil\nimport struct\nfrom array import array\n"),
    (
        "fairseq/data/indexed_dataset.py",
        "        self._dtype = dtype\n        self._sizes = []\n",
        '        self._dtype = dtype\n        self._sizes = array("i")\n',
    ),
    (
        "fairseq/data/indexed_dataset.py",
        "        for size in index.sizes:\n            self._sizes.append(size)\n",
        "        self._sizes.frombytes(np.asarray(index.sizes, dtype=np.int32).tobytes())\n",
    ),
    (
        "fairseq/data/indexed_dataset.py",
        "                def write(self, sizes):\n"
        "                    pointers = self._get_pointers(sizes)\n"
        "\n"
        '                    self._file.write(struct.pack("<Q", len(sizes)))\n'
        "\n"
        "                    sizes = np.array(sizes, dtype=np.int32)\n"
        '                    self._file.write(sizes.tobytes(order="C"))\n'
        "                    del sizes\n"
        "\n"
        "                    pointers = np.array(pointers, dtype=np.int64)\n"
        '                    self._file.write(pointers.tobytes(order="C"))\n'
        "                    del pointers\n",
        "                def write(self, sizes):\n"
        '                    self._file.write(struct.pack("<Q", len(sizes)))\n'
        "\n"
        "                    sizes = np.ascontiguousarray(sizes, dtype=np.int32)\n"
        "                    self._file.write(sizes)  # its buffer, not a copy\n"
        "\n"
        "                    address = 0  # pointers: byte offset of each item, a block of 64k at a time\n"
        "                    for start in range(0, len(sizes), 1 << 16):\n"
        "                        nbytes = sizes[start:start + (1 << 16)].astype(np.int64) * dtype().itemsize\n"
        "                        ends = np.cumsum(nbytes) + address\n"
        "                        self._file.write(ends - nbytes)\n"
        "                        address = int(ends[-1])\n"
        "                    del sizes\n",
    ),
    # 14. --amp was CUDA-only: autocast and the loss scaler were torch.cuda.amp's, so on the CPU it did
    #     nothing. With --cpu it is now bfloat16 autocast over the forward pass and the loss (weights, gradients
    #     and the optimizer stay float32; bfloat16 has float32's range, so no loss scaling): on CPUs with native
    #     bfloat16 (AVX512_BF16, AMX) the matrix products run in it (pipeline.benchmarks.cpu_bf16).
    (
        "fairseq/tasks/fairseq_task.py",
        "            with torch.cuda.amp.autocast(enabled=(isinstance(optimizer, AMPOptimizer))):\n",
        "            amp_device = next(model.parameters()).device.type\n"
        "            with torch.autocast(\n"
        "                amp_device,\n"
        '                dtype=torch.float16 if amp_device == "cuda" else torch.bfloat16,\n'
        "                enabled=isinstance(optimizer, AMPOptimizer),\n"
        "            ):\n",
    ),
    (
        "fairseq/optim/amp_optimizer.py",
        "        self._grad_scaler = torch.cuda.amp.GradScaler(**amp_kwargs)\n",
        "        cuda = torch.cuda.is_available() and not cfg.common.cpu\n"
        '        self._grad_scaler = torch.amp.GradScaler("cuda" if cuda else "cpu", enabled=cuda, **amp_kwargs)\n',
    ),
    #     Without a scaler, non-finite gradients are divergence, not an overflow to retry at a lower scale.
    (
        "fairseq/trainer.py",
        "                    if self.cfg.common.amp:\n                        overflow = True\n",
        "                    if self.cfg.common.amp and self.optimizer.scaler.is_enabled():\n"
        "                        overflow = True\n",
    ),
    ("fairseq/version.txt", VERSION, LOCAL_VERSION),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sdist(dest: Path, sdist: Path | None) -> Path:
    if sdist is None:
        sdist = dest / "fairseq-0.12.2.tar.gz"
        if not sdist.exists():
            print(f"downloading {SDIST_URL}", file=sys.stderr)
            urllib.request.urlretrieve(SDIST_URL, sdist)
    digest = sha256(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"{sdist}: sha256 {digest} is not fairseq {VERSION}'s sdist ({SDIST_SHA256}); "
            "this patch set applies to fairseq 0.12.2 only"
        )
    return sdist


def apply_patches(src: Path) -> None:
    for rel, old, new in PATCHES:
        path = src / rel
        text = path.read_text(encoding="utf-8")
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"{path}: expected the 0.12.2 text once, found it {count} times: {old!r}")
        path.write_text(text.replace(old, new), encoding="utf-8")


def build(out: Path, sdist: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    wheel = next(out.glob(f"fairseq-{LOCAL_VERSION}-*.whl"), None)
    if wheel is not None:
        return wheel
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        archive = fetch_sdist(out, sdist)
        with tarfile.open(archive) as tar:
            tar.extractall(tmpdir, filter="data")
        src = tmpdir / f"fairseq-{VERSION}"
        shutil.rmtree(src / "fairseq.egg-info", ignore_errors=True)
        apply_patches(src)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)],
            check=True,
        )
    return next(out.glob(f"fairseq-{LOCAL_VERSION}-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dist"), help="directory for the wheel")
    parser.add_argument("--sdist", type=Path, help="a local fairseq-0.12.2.tar.gz instead of PyPI's")
    args = parser.parse_args()
    print(build(args.out, args.sdist))


if __name__ == "__main__":
    main()
