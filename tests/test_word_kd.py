"""The word-level KD criterion (fairseq_plugins/criterions/word_kd.py): exact, teacher kept out, trains."""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ARCH, data_dir
from fairseq import checkpoint_utils, models, options, utils
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)

from fairseq_plugins.criterions import word_kd
from fairseq_plugins.criterions.word_kd import WordKDCriterion, WordKDLoss, teacher_distribution
from pipeline.checkpoints import fastpath_copies

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "fairseq_plugins"
PAD = 1


# ---------------------------------------------------------------------------------------------
# The loss on random logits, against independent references


def reference(z, teachers, target, alpha, eps, temperature, topk):
    """Per-token loss, nll, ce, kl from plain torch / fairseq functions (autograd for the gradient)."""
    lprobs = F.log_softmax(z, -1)
    ce, nll = label_smoothed_nll_loss(lprobs, target, eps, ignore_index=PAD, reduce=False)
    p = torch.stack([F.softmax(t / temperature, -1) for t in teachers]).mean(0)
    student_t = F.log_softmax(z / temperature, -1)
    if topk:
        values, index = p.topk(topk, -1)
        p_k = values / values.sum(-1, keepdim=True)
        kl = (p_k * (p_k.log() - student_t.gather(1, index))).sum(-1)
    else:
        kl = F.kl_div(student_t, p, reduction="none").sum(-1)
    kl = kl.masked_fill(target.eq(PAD), 0.0)
    loss = alpha * ce.squeeze(1) + (1 - alpha) * temperature**2 * kl
    return loss, nll.squeeze(1), ce.squeeze(1), kl


def fused(z, teachers, target, alpha, eps, temperature, topk):
    lprobs = F.log_softmax(z, -1)
    probs, index, negent, workspace = teacher_distribution([t.clone() for t in teachers], temperature, topk)
    return WordKDLoss.apply(lprobs, target, PAD, probs, index, negent, workspace, alpha, eps, temperature, True)


def random_case(n=45, v=37, n_teachers=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=gen) * 2
    teachers = [torch.randn(n, v, generator=gen) * 3 for _ in range(n_teachers)]
    target = torch.randint(4, v, (n,), generator=gen)
    target[::4] = PAD  # padding rows
    weights = torch.rand(n, generator=gen)  # an arbitrary upstream gradient per token
    return z, teachers, target, weights


def compare(z, teachers, target, weights, alpha, eps, temperature, topk):
    results = []
    for fn in (reference, fused):
        zz = z.clone().requires_grad_(True)
        out = fn(zz, teachers, target, alpha, eps, temperature, topk)
        (out[0] * weights).sum().backward()
        results.append((out, zz.grad))
    (ref, ref_grad), (got, got_grad) = results
    for name, r, g in zip(("loss", "nll", "ce", "kl"), ref, got, strict=True):
        torch.testing.assert_close(g.detach(), r.detach(), rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-6)
    return ref, got


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request, monkeypatch):
    """Run each loss test with the row chunks spanning the whole batch, and with chunks of 3 rows."""
    if request.param:
        monkeypatch.setattr(word_kd, "CPU_CHUNK_ELEMENTS", 3 * 37)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_term_equals_kl_div_with_padding(temperature, chunking):
    z, teachers, target, weights = random_case()
    ref, got = compare(z, teachers, target, weights, alpha=0.0, eps=0.0, temperature=temperature, topk=0)
    kl_div = F.kl_div(F.log_softmax(z / temperature, -1), F.softmax(teachers[0] / temperature, -1), reduction="none")
    kl_div = kl_div.sum(-1).masked_fill(target.eq(PAD), 0.0)
    torch.testing.assert_close(got[3], kl_div, rtol=1e-5, atol=1e-6)
    # alpha = 0: the loss is exactly T^2 KL, and padding contributes nothing
    torch.testing.assert_close(got[0], temperature**2 * kl_div, rtol=1e-5, atol=1e-5)
    assert torch.all(got[0][target.eq(PAD)] == 0)
    assert kl_div[target.ne(PAD)].min() > 0


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0])  # (0.05: the max-shifted logsumexp)
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_mixed_loss_and_gradient(alpha, temperature, chunking):
    z, teachers, target, weights = random_case(seed=1)
    compare(z, teachers, target, weights, alpha=alpha, eps=0.1, temperature=temperature, topk=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_of_whole_vocabulary_equals_full_kl(temperature, chunking):
    z, teachers, target, weights = random_case(seed=2)
    v = z.size(1)
    full, _ = compare(z, teachers, target, weights, alpha=0.4, eps=0.1, temperature=temperature, topk=0)
    _, top_v = compare(z, teachers, target, weights, alpha=0.4, eps=0.1, temperature=temperature, topk=v)
    for a, b in zip(full, top_v, strict=True):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_teachers", [1, 2])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_small_topk_is_renormalised_per_token(n_teachers, temperature, chunking):
    z, teachers, target, weights = random_case(n_teachers=n_teachers, seed=3)
    probs, index, negent, _ = teacher_distribution([t.clone() for t in teachers], temperature, topk=5)
    assert probs.shape == index.shape == (z.size(0), 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(z.size(0)))  # per token, not per batch
    full = torch.stack([F.softmax(t / temperature, -1) for t in teachers]).mean(0)
    values, top = full.topk(5, -1)
    assert torch.equal(index.sort(-1).values, top.sort(-1).values)
    torch.testing.assert_close(probs, full.gather(1, index) / values.sum(-1, keepdim=True))
    torch.testing.assert_close(negent, (probs * probs.log()).sum(-1))
    compare(z, teachers, target, weights, alpha=0.2, eps=0.1, temperature=temperature, topk=5)


def test_ensemble_averages_probabilities(chunking):
    z, teachers, target, weights = random_case(n_teachers=3, seed=4)
    probs, index, negent, _ = teacher_distribution([t.clone() for t in teachers], 2.0, 0)
    mean = torch.stack([F.softmax(t / 2.0, -1) for t in teachers]).mean(0)
    assert index is None
    torch.testing.assert_close(probs, mean)
    torch.testing.assert_close(negent, (mean * mean.log()).sum(-1))
    compare(z, teachers, target, weights, alpha=0.5, eps=0.0, temperature=2.0, topk=0)


@pytest.mark.parametrize("topk", [0, 5])
@pytest.mark.parametrize("n_teachers", [1, 2])
def test_half_precision_teacher_logits(topk, n_teachers, chunking):
    """Under --fp16/--bf16 the teacher's logits are half: its distribution is still computed in float32."""
    z, teachers, target, weights = random_case(n_teachers=n_teachers, seed=5)
    halves = [t.to(torch.bfloat16) for t in teachers]
    probs, _, _, workspace = teacher_distribution([t.clone() for t in halves], 2.0, topk)
    assert probs.dtype == torch.float32
    assert workspace is None or workspace.dtype == torch.float32  # (the ensemble's own float32 buffer)
    compare(z, [t.float() for t in halves], target, weights, alpha=0.5, eps=0.1, temperature=2.0, topk=topk)
    lprobs = F.log_softmax(z, -1)
    got = WordKDLoss.apply(lprobs, target, PAD, *teacher_distribution(halves, 2.0, topk), 0.5, 0.1, 2.0, False)
    ref = reference(z, [t.float() for t in halves], target, 0.5, 0.1, 2.0, topk)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-5, atol=1e-5)


def test_second_backward_is_refused():
    z, teachers, target, weights = random_case()
    zz = z.clone().requires_grad_(True)
    loss = fused(zz, teachers, target, 0.5, 0.1, 1.0, 0)[0].sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


# ---------------------------------------------------------------------------------------------
# Real fairseq objects: the smoke data, the tiny teacher


@pytest.fixture(scope="module")
def fairseq_setup(tiny_teacher):
    """(task, a batch of the valid set, a freshly initialised tiny student)."""
    (teacher,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_teacher)])
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=1200, seed=1).next_epoch_itr(shuffle=False)
    sample = next(itr)
    torch.manual_seed(3)
    student = models.build_model(cfg.model, task)
    return task, sample, student


def build(task, teacher_path, **kwargs):
    return WordKDCriterion(task, sentence_avg=False, teacher_path=str(teacher_path), **kwargs)


def test_cli_registers_word_kd_with_the_documented_defaults(tmp_path):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [str(tmp_path), "--user-dir", str(PLUGINS), "--task", "translation", "--arch", "transformer",
         "--criterion", "word_kd", "--teacher-path", "a.pt:b.pt"],
    )  # fmt: skip
    assert args.criterion == "word_kd"
    assert (args.kd_alpha, args.kd_temperature, args.kd_topk, args.label_smoothing) == (0.5, 1.0, 0, 0.0)
    assert args.teacher_path == "a.pt:b.pt"
    assert args.kd_teacher_cache == ""  # the teacher runs online unless a cache is given


def test_alpha_one_reproduces_label_smoothed_cross_entropy(fairseq_setup, tiny_teacher):
    task, sample, student = fairseq_setup
    student = copy.deepcopy(student).eval()  # no dropout: both criteria see the same logits
    results = []
    for criterion in (
        LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1),
        build(task, tiny_teacher, kd_alpha=1.0, label_smoothing=0.1),
    ):
        student.zero_grad()
        loss, sample_size, log = criterion(student, sample)
        loss.backward()
        grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
        results.append((loss.detach(), sample_size, log, grads))
    (ce_loss, ce_size, ce_log, ce_grads), (kd_loss, kd_size, kd_log, kd_grads) = results
    assert kd_size == ce_size == sample["ntokens"]
    torch.testing.assert_close(kd_loss, ce_loss, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(kd_log["nll_loss"], ce_log["nll_loss"], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(kd_log["ce_loss"], ce_log["loss"], rtol=1e-6, atol=1e-4)
    assert "kl_loss" not in kd_log  # alpha = 1: the teacher is not run
    assert len(kd_grads) == len(ce_grads) > 0
    for a, b in zip(kd_grads, ce_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kl_on_real_models_matches_kl_div(fairseq_setup, tiny_teacher):
    task, sample, student = fairseq_setup
    student = copy.deepcopy(student).eval()
    criterion = build(task, tiny_teacher, kd_alpha=0.0, kd_temperature=2.0)
    loss, _, log = criterion(student, sample)
    teacher = criterion.teachers[0]
    with torch.no_grad():
        t_logits = teacher(**sample["net_input"])[0]
        s_logits = student(**sample["net_input"])[0]
    kl = F.kl_div(F.log_softmax(s_logits / 2, -1), F.log_softmax(t_logits / 2, -1), log_target=True, reduction="none")
    kl = kl.sum(-1).masked_fill(sample["target"].eq(task.target_dictionary.pad()), 0.0).sum()
    torch.testing.assert_close(log["kl_loss"], kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss.detach(), 4.0 * kl, rtol=1e-5, atol=1e-4)
    # an ensemble of the same teacher twice averages to the same distribution
    pair = build(task, f"{tiny_teacher}:{tiny_teacher}", kd_alpha=0.0, kd_temperature=2.0)
    assert len(pair.teachers) == 2
    torch.testing.assert_close(pair(student, sample)[2]["kl_loss"], log["kl_loss"], rtol=1e-5, atol=1e-4)


def test_teacher_stays_out_of_the_criterion_and_gets_no_gradient(fairseq_setup, tiny_teacher):
    task, sample, student = fairseq_setup
    student = copy.deepcopy(student).train()
    criterion = build(task, tiny_teacher, kd_alpha=0.5, kd_topk=8, label_smoothing=0.1)
    teacher = criterion.teachers[0]
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert not utils.has_parameters(criterion)  # so the trainer neither optimises nor DDP-wraps it
    assert all(m is not teacher for m in criterion.modules())
    criterion.half()  # what the trainer does under --fp16: must not touch the teacher
    assert next(teacher.parameters()).dtype == torch.float32

    student.zero_grad()
    loss, _, log = criterion(student, sample)
    loss.backward()
    assert log["kl_loss"] > 0 and log["ce_loss"] > 0
    copies = set(fastpath_copies(dict(student.named_parameters())))
    grads = {n: p.grad for n, p in student.named_parameters() if n not in copies}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training

    # the teacher follows the student's dtype (half/bf16 under --fp16/--bf16), lazily
    student.to(torch.bfloat16)
    loss, _, log = criterion(student, sample)
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(loss)
    student.float()
    criterion(student, sample)
    assert next(teacher.parameters()).dtype == torch.float32


def test_missing_teacher_fails_with_its_path(fairseq_setup, tiny_teacher, tmp_path):
    task, _, _ = fairseq_setup
    missing = tmp_path / "no" / "teacher.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build(task, missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build(task, f"{tiny_teacher}:{missing}")
    with pytest.raises(ValueError, match="--teacher-path"):
        WordKDCriterion(task, sentence_avg=False, teacher_path="", kd_alpha=0.5)


@pytest.mark.parametrize("change", ["entry", "extra"])
def test_dictionary_mismatch_fails_naming_both_files(fairseq_setup, tiny_teacher, smoke_data, tmp_path, change):
    task, _, _ = fairseq_setup
    bin_dir = data_dir(smoke_data) / "bin"
    other = tmp_path / "teacher_bin"
    other.mkdir()
    shutil.copy(bin_dir / "dict.de.txt", other / "dict.de.txt")
    lines = (bin_dir / "dict.en.txt").read_text().splitlines(keepends=True)
    if change == "entry":
        word = lines[10].split()[0]
        lines[10] = "zzzunknownzzz 1\n"
        index, student_entry, teacher_entry = 10 + task.target_dictionary.nspecial, word, "zzzunknownzzz"
    else:
        lines.append("zzzextrazzz 1\n")
        index, student_entry, teacher_entry = len(task.target_dictionary), "<end of dictionary>", "zzzextrazzz"
    (other / "dict.en.txt").write_text("".join(lines))
    state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = str(other)
    moved = tmp_path / "teacher.pt"
    torch.save(state, moved)

    with pytest.raises(ValueError) as err:
        build(task, moved)
    message = str(err.value)
    assert str(bin_dir / "dict.en.txt") in message and str(other / "dict.en.txt") in message
    assert f"index {index}" in message
    assert repr(student_entry) in message and repr(teacher_entry) in message


# ---------------------------------------------------------------------------------------------
# fairseq-train / fairseq-validate with --user-dir, single process, update-freq, two ranks


def fairseq_cli(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run a fairseq command line with one thread per process (2 shared cores), from cwd; returns its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    env.pop("PYTHONPATH", None)  # the plugin must import through --user-dir alone
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def kd_train_args(bin_dir: Path, save_dir: Path, teacher: Path, max_update: int) -> list[str]:
    return [
        str(bin_dir), *TINY_ARCH, "--task", "translation", "--cpu", "--seed", "1",
        "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--max-tokens", "2000", "--max-update", str(max_update), "--disable-validation",
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "3",
        "--user-dir", str(PLUGINS), "--criterion", "word_kd", "--teacher-path", str(teacher),
        "--kd-alpha", "0.5", "--kd-temperature", "1", "--kd-topk", "0", "--label-smoothing", "0.1",
    ]  # fmt: skip


def logged(log: str, key: str) -> list[float]:
    return [float(m) for m in re.findall(rf"train_inner .*?\b{key}=([-0-9.]+)", log)]


def test_fairseq_train_and_validate_with_word_kd(smoke_data, tiny_teacher, tmp_path):
    bin_dir = data_dir(smoke_data) / "bin"
    save_dir = tmp_path / "student"
    log = fairseq_cli(
        "fairseq_cli.train", *kd_train_args(bin_dir, save_dir, tiny_teacher, max_update=12), "--update-freq", "2",
        cwd=tmp_path,
    )  # fmt: skip
    losses = logged(log, "loss")
    assert len(losses) == 4, log[-3000:]
    for key in ("nll_loss", "ce_loss", "kl_loss"):
        assert len(logged(log, key)) == 4, key
    assert losses[-1] < losses[0] - 0.3, losses

    # no teacher inside the student's checkpoint: same tensors as a plain-CE checkpoint of the same model
    student_ckpt = save_dir / "checkpoint_last.pt"
    kd_state = torch.load(student_ckpt, map_location="cpu", weights_only=False)
    ce_state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    assert kd_state["cfg"]["criterion"]["_name"] == "word_kd" and kd_state.get("criterion") is None
    assert kd_state["model"].keys() == ce_state["model"].keys()

    def tensor_bytes(obj):
        if torch.is_tensor(obj):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(tensor_bytes(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            return sum(tensor_bytes(v) for v in obj)
        return 0

    for key in ("model", "last_optimizer_state"):  # (extra_state also holds the logged meters' values)
        assert tensor_bytes(kd_state[key]) == tensor_bytes(ce_state[key]), key
    teacher_bytes = tensor_bytes(ce_state["model"])
    # the file may differ by the text of its config and logged meters (ce_loss, kl_loss): a few KB
    assert student_ckpt.stat().st_size <= Path(tiny_teacher).stat().st_size + 8192 < 2 * teacher_bytes

    out = fairseq_cli(
        "fairseq_cli.validate", str(bin_dir), "--path", str(student_ckpt), "--user-dir", str(PLUGINS),
        "--task", "translation", "--batch-size", "32", "--valid-subset", "valid", "--cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert re.search(r"valid on 'valid' subset \| loss [0-9.]+ \| nll_loss [0-9.]+ \| ce_loss [0-9.]+ \| kl_loss", out)


def test_fairseq_train_word_kd_on_two_ranks(smoke_data, tiny_teacher, tmp_path):
    """--distributed-world-size 2 on CPU (gloo; fairseq's c10d DDP needs GPUs): each rank loads its teacher."""
    bin_dir = data_dir(smoke_data) / "bin"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        *kd_train_args(bin_dir, tmp_path / "ddp", tiny_teacher, max_update=6), "--max-tokens", "1000",
        "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    env.pop("PYTHONPATH", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fairseq_cli.train", *args], cwd=tmp_path, env=dict(env, RANK=str(rank)),
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert len(logged(logs[0], "kl_loss")) == 2
    assert (tmp_path / "ddp" / "checkpoint_last.pt").exists()


def test_benchmark_script_runs(capsys):
    """The benchmark (python -m pipeline.benchmarks.word_kd) on tiny sizes: it runs and prints its ratios."""
    from pipeline.benchmarks import word_kd as bench

    argv = ["--quick", "--vocab", "200", "--tokens", "150", "--reps", "1", "--warmup", "0", "--variants", "ce,teacher,kd"]
    results = bench.main(argv)
    assert set(results["ratios"]) == {"kd"} and results["ratios"]["kd"] > 0
    out = capsys.readouterr().out
    assert "ratio kd" in out and "peak" in out
    # the cached teacher beside the online top-8, each as a ratio to the CE step
    results = bench.main([*argv[:-1], "ce,kd_top8,kd_cache8"])
    assert set(results["ratios_to_ce"]) == {"kd_top8", "kd_cache8"} and results["ratios_to_ce"]["kd_cache8"] > 0
    assert "goal cached word-KD / CE <= 1.10" in capsys.readouterr().out


def test_topk_above_the_vocabulary_warns_and_keeps_the_whole_distribution(fairseq_setup, tiny_teacher, caplog):
    task, sample, student = fairseq_setup
    student = copy.deepcopy(student).eval()
    vocab = len(task.target_dictionary)
    with caplog.at_level("WARNING", logger=word_kd.logger.name):
        over = build(task, tiny_teacher, kd_alpha=0.0, kd_topk=vocab + 1000)
    assert f"--kd-topk {vocab + 1000} exceeds the target vocabulary ({vocab} entries)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=word_kd.logger.name):
        exact = build(task, tiny_teacher, kd_alpha=0.0, kd_topk=vocab)
    assert "exceeds the target vocabulary" not in caplog.text  # top-V is no clamp
    full = build(task, tiny_teacher, kd_alpha=0.0, kd_topk=0)
    torch.testing.assert_close(over(student, sample)[2]["kl_loss"], full(student, sample)[2]["kl_loss"],
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(exact(student, sample)[2]["kl_loss"], full(student, sample)[2]["kl_loss"],
                               rtol=1e-5, atol=1e-4)
