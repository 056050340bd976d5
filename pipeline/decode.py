"""Decoding with a trained fairseq model through fairseq's Python API, shared by evaluation,
translation and distillation.

Hypotheses always come back in input order (restored by sample id: fairseq batches by length),
which is where earlier pipelines went wrong. Raw-text pre/post-processing (Moses punctuation
normalisation + SentencePiece, and back) lives here too, so every stage treats text the same way.

    lm = load_model(Path("work/models/teacher/model.pt"))
    nbest = decode_lines(lm, ["▁Ein ▁Mann ...", ...], GenerationSettings(beam=5, nbest=5))
    nbest[i][0].tokens, nbest[i][0].score   # best hypothesis of line i (spm pieces, fairseq score)
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.corpus import CorpusError
from pipeline.search import BatchSettings, Decoded, DecodeStats, GenerationSettings, Hypothesis
from pipeline.spm import TextCodec  # noqa: F401 (API: torch-free, shared by both backends)

log = logging.getLogger("pipeline.decode")

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "fairseq_plugins"


@dataclass
class LoadedModel:
    """A model ready for inference, with its task (dictionaries) and where it runs."""

    path: Path
    model: Any  # fairseq.models.FairseqEncoderDecoderModel
    task: Any  # fairseq.tasks.FairseqTask
    cfg: Any  # the checkpoint's (omegaconf) config
    data_dir: Path
    device: torch.device
    fp16: bool

    @property
    def source_lang(self) -> str:
        return self.task.cfg.source_lang

    @property
    def target_lang(self) -> str:
        return self.task.cfg.target_lang

    def describe_device(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"


# ----------------------------------------------------------------------------------------------
# Loading


def pick_device(cpu: bool = False) -> torch.device:
    """CUDA when present (pipeline.devices may have narrowed CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() and not cpu else torch.device("cpu")


def _has_dicts(path: Path) -> bool:
    return path.is_dir() and any(path.glob("dict.*.txt"))


def resolve_data_dir(checkpoint: Path, cfg_data: str | None, override: str | os.PathLike | None = None) -> Path:
    """The directory with the fairseq dictionaries the model was trained with.

    Tried in order: an explicit override; the checkpoint's own directory (a self-contained model
    directory); the training data path stored in the checkpoint, as given, then relative to each
    directory above the checkpoint (so work/models/X/model.pt finds a relative work/data/bin).
    """
    if override is not None:
        path = Path(override)
        if not _has_dicts(path):
            raise CorpusError(f"--data {path}: no fairseq dictionaries (dict.*.txt) there")
        return path
    candidates = [checkpoint.parent]
    if cfg_data:
        stored = Path(str(cfg_data).split(os.pathsep)[0])
        candidates.append(stored)
        if not stored.is_absolute():
            candidates += [parent / stored for parent in checkpoint.resolve().parents]
    for path in candidates:
        if _has_dicts(path):
            return path
    raise CorpusError(
        f"{checkpoint}: cannot find the model's dictionaries (dict.*.txt): the training data directory "
        f"stored in the checkpoint ({cfg_data}) does not exist here; pass --data DIR (e.g. work/data/bin)"
    )


def _import_user_dir(user_dir: str | None) -> None:
    """Import the plugin package a checkpoint was trained with (our fairseq_plugins), if any.

    Only custom tasks/models matter for decoding; a training-only plugin (e.g. a criterion) that
    fails to import is reported and ignored.
    """
    if not user_dir:
        return
    try:
        if Path(user_dir).name == PLUGINS.name:
            importlib.import_module(PLUGINS.name)  # the repository root is on sys.path (PYTHONPATH)
        else:
            from argparse import Namespace

            from fairseq import utils

            utils.import_user_module(Namespace(user_dir=user_dir))
    except Exception as err:  # decoding rarely needs the plugin; say so and go on
        log.warning("could not import the checkpoint's --user-dir %s (%s); continuing without it", user_dir, err)


def _infer_langs(data_dir: Path) -> tuple[str | None, str | None]:
    for path in sorted(data_dir.iterdir()):
        parts = path.name.split(".")
        if len(parts) >= 3 and len(parts[1].split("-")) == 2:
            src, tgt = parts[1].split("-")
            return src, tgt
    return None, None


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file (a model directory means its model.pt), or a clear error."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise CorpusError(f"{path}: a directory without model.pt (give the checkpoint file)")
        path = path / "model.pt"
    if not path.is_file():
        hint = f" (train it first: `snakemake {path}`)" if re.fullmatch(r"work/models/[^/]+/model\.pt", str(path)) else ""
        raise CorpusError(f"{path}: no such model checkpoint{hint}")
    return path


def read_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """fairseq's checkpoint loader (config upgraded), with a clear error for a missing or unreadable file."""
    from fairseq import checkpoint_utils

    path = checkpoint_file(checkpoint)
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    except Exception as err:  # torch/pickle raise many types for a bad file
        raise CorpusError(f"{path}: not a readable fairseq checkpoint ({type(err).__name__}: {err})") from None
    if state.get("cfg") is None or "model" not in state:
        raise CorpusError(f"{path}: not a fairseq checkpoint (no model weights and config)")
    return state


def load_model(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    src: str | None = None,
    tgt: str | None = None,
    cpu: bool = False,
    fp16: bool = False,
) -> LoadedModel:
    """Load a fairseq checkpoint for inference (eval mode, on CUDA when available; fp16 only on CUDA).

    Training-only state (optimizer, criterion) is ignored. data_dir defaults to the dictionaries
    found by resolve_data_dir; src/tgt default to the checkpoint's languages or the data dir's.
    """
    from fairseq import checkpoint_utils
    from fairseq.dataclass.utils import overwrite_args_by_name

    path = checkpoint_file(checkpoint)
    state = read_checkpoint(path)
    cfg = state["cfg"]
    _import_user_dir(cfg.common.get("user_dir") if "common" in cfg else None)
    data = resolve_data_dir(path, cfg.task.get("data"), data_dir)
    overrides: dict[str, Any] = {"data": str(data)}
    ckpt_src, ckpt_tgt = cfg.task.get("source_lang"), cfg.task.get("target_lang")
    inferred = _infer_langs(data)
    src = src or ckpt_src or inferred[0]
    tgt = tgt or ckpt_tgt or inferred[1]
    if src is None or tgt is None:
        raise CorpusError(f"{path}: the checkpoint does not name its languages and {data} holds no binarised "
                          "split to infer them from: pass --src and --tgt")
    for lang in (src, tgt):
        if not (data / f"dict.{lang}.txt").is_file():
            raise CorpusError(f"{data}/dict.{lang}.txt: no such dictionary (languages {src}->{tgt})")
    overrides.update(source_lang=src, target_lang=tgt)
    overwrite_args_by_name(cfg, overrides)
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    except (RuntimeError, KeyError) as err:
        raise CorpusError(f"{path}: cannot build the model from the checkpoint ({err})") from None
    model = models[0]
    device = pick_device(cpu)
    if fp16 and device.type != "cuda":
        log.warning("fp16 requested but decoding on CPU: using fp32")
        fp16 = False
    if fp16:
        model.half()
    model.to(device).eval()
    log.info("loaded %s (%s->%s, dictionaries %s) on %s%s", path, src, tgt, data, device, " fp16" if fp16 else "")
    return LoadedModel(path=path, model=model, task=task, cfg=cfg, data_dir=data, device=device, fp16=fp16)


# ----------------------------------------------------------------------------------------------
# Decoding


def build_generator(lm: LoadedModel, gen: GenerationSettings):
    from fairseq.dataclass.configs import GenerationConfig

    cfg = GenerationConfig(
        beam=gen.beam, nbest=gen.nbest, lenpen=gen.lenpen, max_len_a=gen.max_len_a, max_len_b=gen.max_len_b,
        min_len=gen.min_len, unkpen=gen.unkpen,
    )
    return lm.task.build_generator([lm.model], cfg)


def lines_dataset(lm: LoadedModel, lines: Sequence[str]):
    """A fairseq inference dataset from spm-encoded lines (too long lines are truncated, with a warning)."""
    src_dict = lm.task.source_dictionary
    max_len = min(lm.task.max_positions()[0], lm.model.max_positions()[0])
    tokens, truncated = [], 0
    for line in lines:
        t = src_dict.encode_line(line, add_if_not_exist=False, append_eos=True).long()
        if len(t) > max_len:
            t = torch.cat([t[: max_len - 1], t[-1:]])
            truncated += 1
        tokens.append(t)
    if truncated:
        log.warning("%d source lines longer than %d tokens were truncated", truncated, max_len)
    return lm.task.build_dataset_for_inference(tokens, [len(t) for t in tokens])


def split_dataset(lm: LoadedModel, split: str):
    """The source side of a binarised split of the model's data directory (fairseq names: train, valid, test).

    Only the source is kept, so batches are formed exactly as for the same lines given as text
    (fairseq caps a hypothesis by the longest source of its batch: batching can change outputs).
    """
    try:
        lm.task.load_dataset(split)
    except (FileNotFoundError, OSError) as err:
        raise CorpusError(f"{lm.data_dir}: no binarised split '{split}' ({err})") from None
    pair = lm.task.dataset(split)
    tokens = [pair.src[i] for i in range(len(pair))]
    return lm.task.build_dataset_for_inference(tokens, [len(t) for t in tokens])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_dataset(
    lm: LoadedModel, dataset, gen: GenerationSettings, batch: BatchSettings | None = None, warmup: bool = False
) -> Decoded:
    """Decode every sentence of a fairseq dataset; n-best lists in dataset (= input) order.

    warmup: decode the first batch once before the clock starts (first-call allocations and
    kernel selection would otherwise count against the speed).
    """
    from fairseq import utils

    batch = batch or BatchSettings()
    generator = build_generator(lm, gen)
    results: list[list[Hypothesis] | None] = [None] * len(dataset)
    stats = DecodeStats()
    with warnings.catch_warnings():
        # fairseq's loader asks for pinned memory even on a CPU-only machine
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        itr = lm.task.get_batch_iterator(
            dataset=dataset,
            max_tokens=batch.max_tokens,
            max_sentences=batch.batch_size,
            max_positions=utils.resolve_max_positions(lm.task.max_positions(), lm.model.max_positions()),
            ignore_invalid_inputs=False,
            required_batch_size_multiple=1,
            num_workers=0,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        _decode_batches(lm, generator, itr, gen.nbest, warmup, results, stats)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise CorpusError(f"{len(missing)} sentences were not decoded (first: line {missing[0] + 1}); too long?")
    return Decoded(hypotheses=results, stats=stats)  # type: ignore[arg-type]


def _decode_batches(lm: LoadedModel, generator, itr, nbest: int, warmup: bool,
                    results: list[list[Hypothesis] | None], stats: DecodeStats) -> None:
    from fairseq import utils

    tgt_dict = lm.task.target_dictionary
    start = None
    for sample in itr:
        if lm.device.type == "cuda":
            sample = utils.move_to_cuda(sample, lm.device)
        if start is None:
            if warmup:
                lm.task.inference_step(generator, [lm.model], sample)
                stats.warmup_batches = 1
            _sync(lm.device)
            start = time.perf_counter()
        outputs = lm.task.inference_step(generator, [lm.model], sample)
        for sample_id, outputs_nbest in zip(sample["id"].tolist(), outputs, strict=True):
            hyps = []
            for hypo in outputs_nbest[:nbest]:
                toks = hypo["tokens"].int().cpu()
                text = tgt_dict.string(toks)
                length = int((toks != tgt_dict.eos()).sum())
                hyps.append(Hypothesis(tokens=text, score=float(hypo["score"]), length=length))
            if results[sample_id] is not None:
                raise RuntimeError(f"sentence {sample_id} decoded twice")
            results[sample_id] = hyps
            stats.sentences += 1
            stats.target_tokens += hyps[0].length if hyps else 0
        stats.batches += 1
    _sync(lm.device)
    stats.seconds = time.perf_counter() - start if start is not None else 0.0


def decode_lines(
    lm: LoadedModel, lines: Sequence[str], gen: GenerationSettings, batch: BatchSettings | None = None
) -> list[list[Hypothesis]]:
    """n-best hypotheses with scores for spm-encoded source lines, in input order."""
    if not lines:
        return []
    return decode_dataset(lm, lines_dataset(lm, lines), gen, batch).hypotheses


# ----------------------------------------------------------------------------------------------
# Raw text <-> pieces


def find_spm(lm: LoadedModel, override: str | os.PathLike | None = None) -> Path:
    """The SentencePiece model: explicit, next to the checkpoint, or the data stage's (bin/../spm)."""
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise CorpusError(f"--spm {path}: no such SentencePiece model")
        return path
    candidates = [lm.path.parent / "spm.model", lm.data_dir.parent / "spm" / "spm.model", lm.data_dir / "spm.model"]
    for path in candidates:
        if path.is_file():
            return path
    raise CorpusError(
        f"cannot find the SentencePiece model (looked at {', '.join(map(str, candidates))}): pass --spm PATH"
    )


def runtime_info(lm: LoadedModel) -> dict[str, Any]:
    import fairseq

    return {
        "device": lm.describe_device(),
        "fp16": lm.fp16,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fairseq": fairseq.__version__,
    }
