"""Word-level knowledge distillation: loss = alpha * CE_ls(gold) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T).

Usage::

    fairseq-train DATA --user-dir fairseq_plugins --criterion word_kd \\
        --teacher-path T.pt[:T2.pt...] --kd-alpha 0.5 --kd-temperature 1 --kd-topk 0 --label-smoothing 0.1

Design (see also fairseq's ``label_smoothed_cross_entropy``, whose loss this reproduces at alpha = 1):

* The teachers are loaded once, when the criterion is built, and kept in a plain Python list, outside
  the criterion's module tree: fairseq's trainer never sees them (no optimizer entry, no DDP wrapper,
  no ``criterion.state_dict()`` entry, nothing in the student's checkpoints). On the first forward they
  move to the student's device and dtype (half under ``--fp16``); they stay in eval mode and run under
  ``torch.no_grad()``.
* The loss is one fused autograd function on the student's log-probabilities, the tensor fairseq's CE
  path computes anyway. The forward pass reads it without building full-vocabulary temporaries
  (row chunks that stay in cache); the backward pass writes the gradient of CE and KL together into the
  buffer that held the teacher probabilities, instead of the several full-vocabulary tensors that
  autograd would allocate for the two losses separately.
* Teacher probabilities are computed in place in the teacher's logits buffer when it is float32.
  With ``--kd-topk K`` a single teacher's top-K is taken on the logits (no softmax over the vocabulary):
  the softmax of the K kept logits is exactly the top-K probabilities renormalised per token.
* With ``--kd-teacher-cache DIR`` (built by ``python -m pipeline.kdcache``) no teacher is loaded: the
  teacher's top-K token ids and log-probabilities per target token are read by sample id (the train
  split while the criterion is in training mode, valid in eval mode) and the distribution at T is
  softmax(logprob / T) over the K tokens, what the online ``--kd-topk K`` path computes (log-probabilities
  are the logits shifted per token, which the softmax cancels). The cache must have been made for the
  ``--teacher-path`` checkpoint, the task's dictionaries and its training data: anything else is refused.
"""

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from fairseq import checkpoint_utils, metrics, models, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.file_io import PathManager
from omegaconf import II

from pipeline.model_size import count_parameters  # the repository root is on sys.path (fairseq's --user-dir)

logger = logging.getLogger(__name__)

# Row chunks of about this many elements keep the temporaries of one chunk in the CPU's cache.
CPU_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 24


@dataclass
class WordKDConfig(FairseqDataclass):
    teacher_path: str = field(
        default="",
        metadata={
            "help": "teacher checkpoint(s); several separated by ':' form an ensemble whose probabilities "
            "are averaged. Teacher and student dictionaries must be identical"
        },
    )
    kd_alpha: float = field(
        default=0.5,
        metadata={
            "help": "weight of the label-smoothed cross-entropy on the gold token; 1 - alpha weighs the "
            "distillation KL term (1: plain label-smoothed CE, the teacher is not run; 0: pure distillation)"
        },
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={"help": "temperature T of both distributions in the KL term, which is scaled by T^2"},
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "keep the teacher's top-K probabilities per token, renormalised per token, and compute "
            "the KL over them (0: the full vocabulary)"
        },
    )
    kd_teacher_cache: str = field(
        default="",
        metadata={
            "help": "directory of cached teacher top-K distributions (python -m pipeline.kdcache): read them "
            "by sample id instead of running the teacher; needs --kd-topk K > 0 (at most the cache's K) and "
            "one --teacher-path, the checkpoint the cache was made with"
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "epsilon for label smoothing of the cross-entropy term, 0 means no label smoothing"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")
    # (no `from __future__ import annotations` in this module: fairseq reads these annotations as types)


# --------------------------------------------------------------------------------------------------
# Teacher loading



def _task_cfg(task):
    return getattr(task, "cfg", None) or getattr(task, "args", None)


def _dict_files(task_cfg, data_dir: str, default_langs=(None, None)) -> dict[str, str]:
    """The dictionary files a task config reads: {'source': ..., 'target': ...} or {'target': dict.txt}."""
    src, tgt = getattr(task_cfg, "source_lang", None), getattr(task_cfg, "target_lang", None)
    if hasattr(task_cfg, "source_lang") or hasattr(task_cfg, "target_lang"):
        if src is None or tgt is None:  # fairseq infers the pair from the data files' names
            from fairseq.data import data_utils

            src, tgt = data_utils.infer_language_pair(data_dir) if os.path.isdir(data_dir) else (None, None)
        if src is None or tgt is None:
            src, tgt = default_langs
        return {
            "source": os.path.join(data_dir, f"dict.{src}.txt"),
            "target": os.path.join(data_dir, f"dict.{tgt}.txt"),
        }
    return {"target": os.path.join(data_dir, "dict.txt")}


def _resolve_data_dir(data: str, checkpoint: str) -> str:
    """The teacher's data directory: as recorded, else (relative paths) below an ancestor of the checkpoint."""
    first = utils.split_paths(data)[0]
    if os.path.isabs(first) or os.path.isdir(first):
        return first
    ckpt_dir = os.path.dirname(os.path.abspath(checkpoint))
    while True:
        candidate = os.path.join(ckpt_dir, first)
        if os.path.isdir(candidate):
            return candidate
        up = os.path.dirname(ckpt_dir)
        if up == ckpt_dir:
            return first
        ckpt_dir = up


def check_dictionaries(task, teacher_cfg, checkpoint: str) -> None:
    """Raise ValueError unless the teacher's dictionaries equal the student task's, entry by entry."""
    student_cfg = _task_cfg(task)
    student_files = _dict_files(student_cfg, utils.split_paths(student_cfg.data)[0])
    teacher_data = _resolve_data_dir(teacher_cfg.task.data, checkpoint)
    student_langs = (getattr(student_cfg, "source_lang", None), getattr(student_cfg, "target_lang", None))
    teacher_files = _dict_files(teacher_cfg.task, teacher_data, student_langs)
    for side, student_dict in (("source", task.source_dictionary), ("target", task.target_dictionary)):
        if student_dict is None or side not in teacher_files:
            continue
        teacher_file = teacher_files[side]
        if not PathManager.exists(teacher_file):
            raise FileNotFoundError(
                f"word_kd: cannot check the teacher's {side} dictionary: {teacher_file} not found "
                f"(teacher {checkpoint} was trained on data {teacher_cfg.task.data!r})"
            )
        teacher_symbols = type(task).load_dictionary(teacher_file).symbols
        student_symbols = student_dict.symbols
        if teacher_symbols == student_symbols:
            continue
        index = next(
            (i for i, (s, t) in enumerate(zip(student_symbols, teacher_symbols, strict=False)) if s != t),
            min(len(student_symbols), len(teacher_symbols)),
        )
        student_entry = student_symbols[index] if index < len(student_symbols) else "<end of dictionary>"
        teacher_entry = teacher_symbols[index] if index < len(teacher_symbols) else "<end of dictionary>"
        raise ValueError(
            f"word_kd: teacher and student {side} dictionaries differ: student {student_files.get(side)} "
            f"({len(student_symbols)} entries) vs teacher {teacher_file} ({len(teacher_symbols)} entries, "
            f"teacher checkpoint {checkpoint}); first difference at index {index}: "
            f"student {student_entry!r} != teacher {teacher_entry!r}"
        )


def load_teacher(path: str, task) -> torch.nn.Module:
    """Build one teacher from its checkpoint with the student's task (after the dictionary check)."""
    if not PathManager.exists(path):
        raise FileNotFoundError(f"word_kd: teacher checkpoint not found: {path}")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    if state.get("cfg") is not None:
        cfg = state["cfg"]
    elif state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    else:
        raise ValueError(f"word_kd: {path} is not a fairseq checkpoint (no cfg or args)")
    check_dictionaries(task, cfg, path)
    # models.build_model, not task.build_model: the translation task's build_model would replace the
    # task's BLEU-validation generator with one built on the teacher.
    model = models.build_model(cfg.model, task, from_checkpoint=True)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    del state
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------------
# Teacher distribution and the fused loss


def teacher_logits(teacher, sample) -> torch.Tensor:
    """A teacher's output scores for the sample's target positions, (B, L, V): its logits, or with an adaptive
    softmax (whose net_output[0] are hidden states) its log-probabilities, equivalent to logits here."""
    net_output = teacher(**sample["net_input"])
    if getattr(getattr(teacher, "decoder", None), "adaptive_softmax", None) is not None:
        return teacher.get_normalized_probs(net_output, log_probs=True)
    return net_output[0]


def _chunk_rows(t: torch.Tensor) -> int:
    elements = GPU_CHUNK_ELEMENTS if t.device.type != "cpu" else CPU_CHUNK_ELEMENTS
    return max(1, elements // max(1, t.size(-1)))


@torch.no_grad()
def teacher_distribution(logits: list[torch.Tensor], temperature: float = 1.0, topk: int = 0):
    """Probabilities of softmax(logits / T) averaged over teachers, per row (token).

    ``logits``: teacher logits, each (N, V), without grad. The first one is overwritten when it is a
    contiguous float32 tensor (it becomes the returned buffer). Returns ``(probs, index, negent, workspace)``:

    * ``topk == 0``: ``probs`` (N, V) float32, ``index`` None;
    * ``topk > 0``: ``probs`` (N, K) float32, the top-K probabilities renormalised per row, and ``index``
      (N, K) their vocabulary ids;
    * ``negent`` (N,) = sum_v p log p over the returned distribution (the teacher's part of the KL);
    * ``workspace``: a float32 (N, V) buffer no longer needed (CPU top-K only; the backward pass writes
      the gradient there instead of allocating), or None.
    """
    first = logits[0]
    n, v = first.shape
    k = min(topk, v)
    rows = _chunk_rows(first)
    inv_t = 1.0 / temperature
    reusable = first.dtype == torch.float32 and first.is_contiguous()

    if k > 0 and len(logits) == 1:
        # top-K of softmax(x / T) are the top-K logits; their softmax is the renormalised distribution
        values, index = first.topk(k, dim=-1, sorted=False)
        logp = torch.log_softmax(values.float() * inv_t, dim=-1)
        probs = logp.exp()
        negent = (probs * logp).sum(-1)
        workspace = first if reusable and first.device.type == "cpu" else None
        return probs, index, negent, workspace

    probs = first if reusable else torch.empty((n, v), dtype=torch.float32, device=first.device)
    negent = torch.empty(n, dtype=torch.float32, device=first.device)
    for s in range(0, n, rows):  # each chunk of probs is written while it is in cache
        out = probs[s : s + rows]
        for i, t in enumerate(logits):  # (logits[0] is read before its chunk is overwritten)
            x = t[s : s + rows].float()
            logp = torch.log_softmax(x * inv_t if temperature != 1 else x, dim=-1)
            if i == 0:
                torch.exp(logp, out=out)
            else:
                out.add_(logp.exp_())
        if len(logits) == 1:
            negent[s : s + rows] = logp.mul_(out).sum(-1)
        else:
            out.mul_(1.0 / len(logits))
            negent[s : s + rows] = torch.special.xlogy(out, out).sum(-1)
    if k > 0:
        values, index = probs.topk(k, dim=-1, sorted=False)
        values.div_(values.sum(-1, keepdim=True))
        negent = torch.special.xlogy(values, values).sum(-1)
        workspace = probs if probs.device.type == "cpu" else None
        return values, index, negent, workspace
    return probs, None, negent, None


@torch.no_grad()
def cached_distribution(index: torch.Tensor, logprob: torch.Tensor, temperature: float = 1.0):
    """:func:`teacher_distribution`'s ``(probs, index, negent, workspace)`` from cached top-K log-probabilities.

    ``logprob`` (N, K), any float dtype, are the teacher's log-probabilities at T = 1 of the tokens ``index``
    (N, K); like the online top-K path, the distribution is softmax(logprob / T) over the K tokens.
    """
    logp = torch.log_softmax(logprob.float() * (1.0 / temperature), dim=-1)
    probs = logp.exp()
    negent = (probs * logp).sum(-1)
    return probs, index, negent, None


def _scaled_logsumexp(lprobs: torch.Tensor, scale: float) -> torch.Tensor:
    """Row logsumexp(lprobs * scale) of log-probabilities (torch.logsumexp is about 4x slower on CPU).

    Log-probabilities are <= 0 and each row's largest is >= -log(V), so exp(lprobs * scale) can neither
    overflow nor underflow to an all-zero row unless scale * log(V) is large: only then shift by the max.
    """
    x = lprobs * scale
    if scale * math.log(lprobs.size(-1)) < 60:
        return x.exp_().sum(-1).log_()
    m = x.amax(-1, keepdim=True)
    return x.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


def _student_sums(lprobs: torch.Tensor, probs: torch.Tensor | None, temperature: float):
    """One pass over lprobs by row chunks: sum_v lprobs, sum_v probs * lprobs (dense probs), and
    logsumexp(lprobs / T) (T != 1). Each chunk is read from memory once; its temporaries stay in cache."""
    n = lprobs.size(0)
    f32 = {"dtype": torch.float32, "device": lprobs.device}
    total = torch.empty(n, **f32)
    cross = torch.empty(n, **f32) if probs is not None else None
    lse = torch.empty(n, **f32) if temperature != 1 else None
    rows = _chunk_rows(lprobs)
    for s in range(0, n, rows):
        lp = lprobs[s : s + rows]
        total[s : s + rows] = lp.sum(-1)
        if cross is not None:
            cross[s : s + rows] = (probs[s : s + rows] * lp).sum(-1)
        if lse is not None:
            lse[s : s + rows] = _scaled_logsumexp(lp, 1.0 / temperature)
    return total, cross, lse


class WordKDLoss(torch.autograd.Function):
    """Per-token alpha * CE_ls + (1 - alpha) * T^2 * KL(p || softmax(lprobs / T)), fused forward and backward.

    Inputs: ``lprobs`` (N, V) student log-probabilities (float32), ``target`` (N,), ``ignore_index`` (rows
    whose target is it are masked), the teacher distribution from :func:`teacher_distribution`
    (``probs`` None means no KL term), ``alpha``, ``epsilon``, ``temperature``, and ``inplace``: let the
    backward pass overwrite ``probs`` (or ``workspace``) with the gradient (a second backward then fails).

    Returns per-token ``loss, nll, ce, kl`` (N,), zero on masked rows; only ``loss`` is differentiable.
    CE_ls is fairseq's ``label_smoothed_nll_loss``. At T = 1 the KL reads ``lprobs`` as log-probabilities
    (like ``F.kl_div``); at T != 1 it uses ``log_softmax(lprobs / T)``, which is log_softmax(logits / T)
    when ``lprobs`` = log_softmax(logits).
    """

    @staticmethod
    def forward(ctx, lprobs, target, ignore_index, probs, index, negent, workspace, alpha, epsilon, temperature, inplace):
        n, v = lprobs.shape
        keep = target.ne(ignore_index)
        eps_i = epsilon / (v - 1)
        nll = -lprobs.gather(1, target.unsqueeze(1)).squeeze(1)
        dense = probs is not None and index is None
        total, cross, lse = _student_sums(lprobs, probs if dense else None, temperature if probs is not None else 1)
        smooth = total.neg_()
        ce = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
        if probs is None:
            kl = None
            loss = ce.clone() if alpha == 1 else alpha * ce
        else:
            if not dense:
                cross = (probs * lprobs.gather(1, index)).sum(-1)
            if temperature != 1:
                cross = cross / temperature - lse  # sum_v p_v (lprobs_v / T - lse), sum_v p_v = 1
            kl = negent - cross
            loss = alpha * ce + (1.0 - alpha) * temperature * temperature * kl
        outputs = [loss, nll, ce] + ([kl] if kl is not None else [torch.zeros_like(ce)])
        for out in outputs:
            out.masked_fill_(~keep, 0.0)
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.set_materialize_grads(False)
        ctx.saved = (target, keep, probs, index, workspace, lse, lprobs.shape, lprobs.dtype, lprobs.device)
        ctx.hyper = (alpha, epsilon, temperature, inplace)
        if temperature != 1:
            ctx.save_for_backward(lprobs)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if grad_loss is None:
            return (None,) * 11
        if ctx.saved is None:
            raise RuntimeError("WordKDLoss: backward through the same graph twice is not supported with inplace=True")
        target, keep, probs, index, workspace, lse, shape, dtype, device = ctx.saved
        alpha, epsilon, temperature, inplace = ctx.hyper
        if inplace:
            ctx.saved = None
        n, v = shape
        eps_i = epsilon / (v - 1)
        g = grad_loss.to(torch.float32) * keep
        c_smooth = (-alpha * eps_i * g).unsqueeze(1)  # every entry: d(alpha * eps_i * smooth)
        c_gold = (-alpha * (1.0 - epsilon - eps_i) * g).unsqueeze(1)  # the gold entry
        c_kd = (-(1.0 - alpha) * temperature * g).unsqueeze(1)  # teacher entries: -(1-a) T^2 / T * p
        rows = max(1, (GPU_CHUNK_ELEMENTS if device.type != "cpu" else CPU_CHUNK_ELEMENTS) // v)
        lprobs = ctx.saved_tensors[0] if temperature != 1 else None
        neg_lse = lse.neg().unsqueeze(1) if lse is not None else None

        if probs is not None and index is None:
            grad = probs if inplace else probs.clone()
            if temperature == 1:
                torch.addcmul(c_smooth, grad, c_kd, out=grad)
            else:  # + (1-a) T (softmax(lprobs / T) - p)
                for s in range(0, n, rows):
                    r = slice(s, s + rows)
                    q = torch.add(neg_lse[r], lprobs[r], alpha=1.0 / temperature).exp_()  # softmax(lprobs / T)
                    torch.addcmul(c_smooth[r], grad[r].sub_(q), c_kd[r], out=grad[r])  # c_kd (p - q) + c_smooth
        else:
            usable = inplace and workspace is not None and workspace.shape == shape and workspace.dtype == torch.float32
            grad = workspace if usable else torch.empty(shape, dtype=torch.float32, device=device)
            if probs is None or temperature == 1:
                grad.copy_(c_smooth.expand(n, v))
            else:
                for s in range(0, n, rows):
                    r = slice(s, s + rows)
                    q = torch.add(neg_lse[r], lprobs[r], alpha=1.0 / temperature).exp_()
                    torch.addcmul(c_smooth[r], q, c_kd[r], value=-1.0, out=grad[r])  # -c_kd q + c_smooth
            if probs is not None:
                grad.scatter_add_(1, index, probs * c_kd)
        grad.scatter_add_(1, target.unsqueeze(1), c_gold)
        return (grad.to(dtype),) + (None,) * 10


# --------------------------------------------------------------------------------------------------
# The criterion


@register_criterion("word_kd", dataclass=WordKDConfig)
class WordKDCriterion(FairseqCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        teacher_path="",
        kd_alpha=0.5,
        kd_temperature=1.0,
        kd_topk=0,
        label_smoothing=0.0,
        kd_teacher_cache="",
    ):
        super().__init__(task)
        if not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"word_kd: --kd-alpha must be in [0, 1], got {kd_alpha}")
        if kd_temperature <= 0:
            raise ValueError(f"word_kd: --kd-temperature must be > 0, got {kd_temperature}")
        if kd_topk < 0:
            raise ValueError(f"word_kd: --kd-topk must be >= 0, got {kd_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"word_kd: --label-smoothing must be in [0, 1), got {label_smoothing}")
        self.sentence_avg = sentence_avg
        self.alpha = float(kd_alpha)
        self.temperature = float(kd_temperature)
        self.topk = int(kd_topk)
        vocab = len(task.target_dictionary)
        if self.topk > vocab:
            logger.warning(
                f"word_kd: --kd-topk {self.topk} exceeds the target vocabulary ({vocab} entries): "
                f"top-{vocab}, the whole teacher distribution, is used (as with --kd-topk 0)"
            )
        self.eps = float(label_smoothing)
        paths = [p for p in (teacher_path or "").split(":") if p]
        if not paths and self.alpha < 1:
            raise ValueError("word_kd: --teacher-path is required (unless --kd-alpha 1)")
        for path in paths:  # fail on any missing teacher before loading the others
            if not PathManager.exists(path):
                raise FileNotFoundError(f"word_kd: teacher checkpoint not found: {path}")
        self.cache = None
        if kd_teacher_cache and self.alpha < 1:
            self.cache = self._open_cache(task, kd_teacher_cache, paths)
        # A plain list: nn.Module does not register modules held in a list, so the teachers stay out of
        # parameters(), state_dict(), .to()/.half() and DDP.
        self._teachers: list[torch.nn.Module] = [] if self.cache else [load_teacher(p, task) for p in paths]
        self._teacher_placement = None
        if self._teachers:
            sizes = [count_parameters(t)["parameters"] for t in self._teachers]
            logger.info(f"word_kd: {len(paths)} teacher(s) {paths} ({sizes} parameters, outside the criterion)")

    def _open_cache(self, task, cache_dir: str, paths: list[str]):
        """The cache reader, after checking it fits: K, T for an ensemble, the teacher(s), dictionaries and data."""
        from pipeline.kdcache.store import TeacherCache

        if self.topk <= 0:
            raise ValueError(
                f"word_kd: --kd-teacher-cache {cache_dir} holds the teacher's top-K tokens: set --kd-topk K > 0 "
                "(--kd-topk 0, the full vocabulary, runs the teacher online: drop --kd-teacher-cache)"
            )
        if not paths:
            raise ValueError("word_kd: --kd-teacher-cache needs the --teacher-path it was made with")
        if len(paths) > 1 and self.temperature != 1.0:
            # online, an ensemble averages softmax(logits / T) over its members; the cache holds the log of
            # the average at T = 1, from which no other T's average can be recovered
            raise ValueError(
                f"word_kd: an ensemble's teacher cache holds its members' average at T = 1; --kd-temperature "
                f"{self.temperature:g} with {len(paths)} teachers runs online (drop --kd-teacher-cache)"
            )
        data = utils.split_paths(_task_cfg(task).data)
        if len(data) != 1:
            raise ValueError(f"word_kd: --kd-teacher-cache supports one data directory, got {_task_cfg(task).data!r}")
        cache = TeacherCache(cache_dir)
        if self.topk > cache.topk:
            raise ValueError(
                f"word_kd: --kd-topk {self.topk} exceeds the top-{cache.topk} stored in the teacher cache {cache_dir}"
            )
        if cache.vocab != len(task.target_dictionary):
            raise ValueError(
                f"word_kd: teacher cache {cache_dir} has a {cache.vocab}-entry vocabulary, the task's target "
                f"dictionary {len(task.target_dictionary)}"
            )
        cache.check(paths, data[0])  # StaleCacheError naming what differs
        logger.info(
            f"word_kd: teacher distributions from the cache {cache_dir} (top-{self.topk} of its top-{cache.topk}; "
            f"splits {', '.join(cache.splits)}); teacher(s) {':'.join(paths)} not loaded"
        )
        return cache

    @torch.no_grad()
    def cached_forward(self, sample):
        """Teacher distribution for the sample's target positions, read from the cache by sample id."""
        split = "train" if self.training else "valid"
        target = sample["target"]
        keep = target.ne(self.padding_idx)
        ids = sample["id"].cpu().numpy()
        index, logprob, lengths = self.cache.lookup(split, ids, self.topk)
        found = keep.sum(1).cpu().numpy()
        if (lengths != found).any():
            bad = int((lengths != found).nonzero()[0][0])
            raise ValueError(
                f"word_kd: teacher cache {self.cache.dir} does not match the batch: split '{split}' sentence "
                f"{int(ids[bad])} has {int(found[bad])} target tokens, the cache {int(lengths[bad])} (a cache of "
                "other data, or a validation subset other than 'valid')"
            )
        n, k = target.numel(), self.topk
        full_index = torch.zeros((n, k), dtype=torch.long)
        full_logprob = torch.zeros((n, k), dtype=torch.float16)  # padding rows: any finite distribution
        rows = keep.view(-1).cpu()
        full_index[rows] = torch.from_numpy(index)
        full_logprob[rows] = torch.from_numpy(logprob)
        device = target.device
        return cached_distribution(full_index.to(device), full_logprob.to(device), self.temperature)

    @property
    def teachers(self) -> list[torch.nn.Module]:
        return list(self._teachers)

    def _place_teachers(self, model) -> None:
        ref = next(model.parameters())
        placement = (ref.device, ref.dtype)
        if placement != self._teacher_placement:
            for teacher in self._teachers:
                teacher.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
                teacher.eval()
            self._teacher_placement = placement

    @torch.no_grad()
    def teacher_forward(self, model, sample):
        """Teacher distribution for the sample's target positions (see :func:`teacher_distribution`)."""
        self._place_teachers(model)
        logits = []
        for teacher in self._teachers:
            out = teacher_logits(teacher, sample)
            logits.append(out.reshape(-1, out.size(-1)))
        return teacher_distribution(logits, self.temperature, self.topk)

    def forward(self, model, sample, reduce=True):
        """Compute the loss for the given sample.

        Returns a tuple with three elements:
        1) the loss
        2) the sample size, which is used as the denominator for the gradient
        3) logging outputs to display while training
        """
        use_teacher = self.alpha < 1 and len(self._teachers) > 0
        # the teacher first: its activations are freed before the student's are built
        if self.cache is not None:
            teacher = self.cached_forward(sample)
        else:
            teacher = self.teacher_forward(model, sample) if use_teacher else None
        net_output = model(**sample["net_input"])
        loss, nll_loss, ce_loss, kl_loss = self.compute_loss(model, net_output, sample, teacher, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ce_loss": ce_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if kl_loss is not None:
            logging_output["kl_loss"] = kl_loss.data
        return loss, sample_size, logging_output

    def get_lprobs_and_target(self, model, net_output, sample):
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        return lprobs.view(-1, lprobs.size(-1)), target.view(-1)

    def compute_loss(self, model, net_output, sample, teacher=None, reduce=True):
        """Returns (loss, nll_loss, ce_loss, kl_loss); kl_loss is None without a teacher distribution."""
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        probs, index, negent, workspace = teacher if teacher is not None else (None, None, None, None)
        loss, nll, ce, kl = WordKDLoss.apply(
            lprobs, target, self.padding_idx, probs, index, negent, workspace,
            self.alpha, self.eps, self.temperature, True,
        )  # fmt: skip
        if teacher is None:
            kl = None
        if reduce:
            loss, nll, ce = loss.sum(), nll.sum(), ce.sum()
            kl = kl.sum() if kl is not None else None
        return loss, nll, ce, kl

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training."""
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        nll_loss_sum = sum(log.get("nll_loss", 0) for log in logging_outputs)
        ce_loss_sum = sum(log.get("ce_loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)

        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
        metrics.log_scalar("ce_loss", ce_loss_sum / sample_size / math.log(2), sample_size, round=3)
        if any("kl_loss" in log for log in logging_outputs):
            kl_loss_sum = sum(log.get("kl_loss", 0) for log in logging_outputs)
            metrics.log_scalar("kl_loss", kl_loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """
        Whether the logging outputs returned by `forward` can be summed
        across workers prior to calling `reduce_metrics`. Setting this
        to True will improves distributed training speed.
        """
        return True
