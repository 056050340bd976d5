"""The fairseq backend: beam search with fairseq's own generator, n-best lists in input order.

    backend = FairseqBackend(load_model("work/models/teacher-<key>/model.pt"))
    backend.decode(["▁Ein ▁Mann ...", ...], SearchOptions(beam=5, nbest=5)).hypotheses

Hypotheses always come back in input order (restored by sample id: fairseq batches by length).
The lower-level functions (lines_dataset, split_dataset, decode_dataset, decode_lines) take a
loaded model (pipeline.decoding.fairseq_model.load_model).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.decoding.batching import DEFAULT_MAX_TOKENS, BatchSettings
from pipeline.decoding.fairseq_model import LoadedModel, find_spm, load_model
from pipeline.decoding.options import SearchOptions
from pipeline.decoding.results import Decoded, DecodeStats, Hypothesis
from pipeline.errors import DataError

log = logging.getLogger("pipeline.decoding.fairseq_backend")

FAIRSEQ_DEFAULT_BATCH = BatchSettings(max_tokens=DEFAULT_MAX_TOKENS)  # when the caller names no batch


def build_generator(lm: LoadedModel, gen: SearchOptions):
    from fairseq.dataclass.configs import GenerationConfig

    cfg = GenerationConfig(
        beam=gen.beam, nbest=gen.nbest, lenpen=gen.lenpen, max_len_a=gen.max_len_a, max_len_b=gen.max_len_b,
        min_len=gen.min_len, unkpen=gen.unkpen,
    )
    return lm.task.build_generator(lm.members, cfg)  # several members: fairseq's EnsembleModel


def lines_dataset(lm: LoadedModel, lines: Sequence[str]):
    """A fairseq inference dataset from spm-encoded lines (too long lines are truncated, with a warning)."""
    src_dict = lm.task.source_dictionary
    max_len = min(lm.task.max_positions()[0], *(m.max_positions()[0] for m in lm.members))
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
        raise DataError(f"{lm.data_dir}: no binarised split '{split}' ({err})") from None
    pair = lm.task.dataset(split)
    tokens = [pair.src[i] for i in range(len(pair))]
    return lm.task.build_dataset_for_inference(tokens, [len(t) for t in tokens])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_dataset(
    lm: LoadedModel, dataset, gen: SearchOptions, batch: BatchSettings | None = None, warmup: bool = False
) -> Decoded:
    """Decode every sentence of a fairseq dataset; n-best lists in dataset (= input) order.

    warmup: decode the first batch once before the clock starts (first-call allocations and
    kernel selection would otherwise count against the speed).
    """
    from fairseq import utils

    batch = batch or gen.batch(FAIRSEQ_DEFAULT_BATCH)
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
            max_positions=utils.resolve_max_positions(lm.task.max_positions(), *(m.max_positions() for m in lm.members)),
            ignore_invalid_inputs=False,
            required_batch_size_multiple=1,
            num_workers=0,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        _decode_batches(lm, generator, itr, gen.nbest, warmup, results, stats)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise DataError(f"{len(missing)} sentences were not decoded (first: line {missing[0] + 1}); too long?")
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
                lm.task.inference_step(generator, lm.members, sample)
                stats.warmup_batches = 1
            _sync(lm.device)
            start = time.perf_counter()
        outputs = lm.task.inference_step(generator, lm.members, sample)
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
    lm: LoadedModel, lines: Sequence[str], gen: SearchOptions, batch: BatchSettings | None = None
) -> list[list[Hypothesis]]:
    """n-best hypotheses with scores for spm-encoded source lines, in input order."""
    if not lines:
        return []
    return decode_dataset(lm, lines_dataset(lm, lines), gen, batch).hypotheses


def runtime_info(lm: LoadedModel) -> dict[str, Any]:
    import fairseq

    return {
        "device": lm.describe_device(),
        "fp16": lm.fp16,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fairseq": fairseq.__version__,
    }


class FairseqBackend:
    """A fairseq checkpoint behind the Backend interface (pipeline.decoding.backend)."""

    name = "fairseq"
    normalize_punctuation = True  # a checkpoint does not record the data stage's setting: the CLI's flag decides
    default_batch = FAIRSEQ_DEFAULT_BATCH

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.path: Path = lm.path
        self.source_lang: str = lm.source_lang
        self.target_lang: str = lm.target_lang
        self.device: str = lm.device.type
        self.data_dir: Path | None = lm.data_dir

    def decode(self, lines: Sequence[str], options: SearchOptions, warmup: bool = False) -> Decoded:
        if not lines:
            return Decoded(hypotheses=[])
        return decode_dataset(self.lm, lines_dataset(self.lm, lines), options, options.batch(self.default_batch), warmup)

    def read_split(self, split: str) -> list[str]:
        """The source side of a binarised split of the model's data directory, as spm pieces."""
        dataset = split_dataset(self.lm, split)
        src_dict = self.lm.task.source_dictionary
        return [src_dict.string(dataset.src[i]) for i in range(len(dataset))]

    def spm_model(self, override: str | Path | None = None) -> Path:
        return find_spm(self.lm, override)

    def describe_device(self) -> str:
        return self.lm.describe_device()

    def runtime_info(self) -> dict[str, Any]:
        return runtime_info(self.lm)

    def model_record(self) -> dict[str, Any]:
        if self.lm.is_ensemble:
            return {"checkpoint": ":".join(map(str, self.lm.member_paths)), "ensemble": [str(p) for p in self.lm.member_paths]}
        return {"checkpoint": str(self.path)}

    def model_size(self) -> dict[str, Any]:
        """One model's size; an ensemble's: the members' sums (numbers), with each member's figures."""
        from pipeline.model_size import model_size

        sizes = [model_size(path, model=model) for path, model in zip(self.lm.member_paths, self.lm.members, strict=True)]
        if len(sizes) == 1:
            return sizes[0]
        total = {key: sum(s[key] for s in sizes) for key, value in sizes[0].items()
                 if isinstance(value, int | float) and not isinstance(value, bool)}
        return {**total, "members": sizes}


def open_fairseq(checkpoint: str | Path, data_dir: str | Path | None = None, src: str | None = None,
                 tgt: str | None = None, cpu: bool = False, fp16: bool = False, threads: int | None = None,
                 use_vmap: bool | None = None) -> FairseqBackend:
    """Load a checkpoint for decoding (threads: torch's CPU threads, if given)."""
    if threads:
        torch.set_num_threads(threads)
    if use_vmap:
        log.warning("--vmap is a CTranslate2 option: the fairseq backend decodes with the full vocabulary")
    return FairseqBackend(load_model(checkpoint, data_dir=data_dir, src=src, tgt=tgt, cpu=cpu, fp16=fp16))
