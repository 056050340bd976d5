"""Evaluation, model size and translation on the smoke data with the tiny teacher.

The rule-level test (snakemake evaluate) comes once pipeline/rules/evaluate.smk is included by the
Snakefile; here the stage CLIs and functions run directly on the fixture data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.corpus import read_lines
from pipeline.decoding import BatchSettings, SearchOptions
from pipeline.decoding.fairseq_backend import decode_dataset, decode_lines, lines_dataset, split_dataset
from pipeline.decoding.fairseq_model import load_model
from pipeline.errors import ConfigError, DataError
from pipeline.model_size import count_parameters, fastpath_copies, strip_checkpoint
from pipeline.spm import TextCodec
from tests.conftest import REPO, TINY_ARCH, data_dir

SACREBLEU = Path(sys.executable).parent / "sacrebleu"
# Short hypotheses keep the (untrained, looping) tiny teacher fast.
FAST = ["--beam", "2", "--max-len-a", "0", "--max-len-b", "8"]
FAST_GEN = SearchOptions(beam=2, max_len_a=0, max_len_b=8)


def run_stage(module: str, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, text=True, capture_output=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def data(smoke_data) -> Path:
    return data_dir(smoke_data)


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return load_model(tiny_teacher, cpu=True)


@pytest.fixture(scope="module")
def evaluation(tiny_teacher, data, tmp_path_factory) -> dict:
    """pipeline.evaluate on the binarised test split, as the rule runs it."""
    out = tmp_path_factory.mktemp("eval")
    proc = run_stage(
        "pipeline.evaluate", "--model", str(tiny_teacher), "--name", "teacher", "--set", "test",
        "--split", "test", "--data", str(data / "bin"), "--ref", str(data / "raw" / "test.en"),
        "--spm", str(data / "spm" / "spm.model"), "--json", str(out / "test.json"),
        "--beam-hyps", str(out / "test.beam.txt"), "--greedy-hyps", str(out / "test.greedy.txt"),
        *FAST, "--max-tokens", "2000", "--threads", "1", "--cpu", "--speed-runs", "3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "test.json").read_text())


def sacrebleu_cli(ref: Path, hyp: Path) -> list[float]:
    proc = subprocess.run([str(SACREBLEU), str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "-b", "-w", "4"],
                          text=True, capture_output=True, check=True)
    return [float(x) for x in json.loads(proc.stdout)]


def test_evaluation_json_has_scores_signatures_speed_and_size(evaluation, data):
    n_refs = len(read_lines(data / "raw" / "test.en"))
    assert evaluation["sentences"] == n_refs
    for mode, beam in (("beam", 2), ("greedy", 1)):
        result = evaluation[mode]
        assert result["settings"]["beam"] == beam
        assert "tok:13a" in result["bleu"]["signature"] and "version:" in result["bleu"]["signature"]
        assert result["chrf"]["signature"].startswith("nrefs:1|")
        assert 0 <= result["bleu"]["score"] <= 100 and 0 <= result["chrf"]["score"] <= 100
        hyps = read_lines(result["hypotheses"])
        assert len(hyps) == n_refs
        assert not any("▁" in h for h in hyps)
        speed = result["speed"]
        assert speed["sentences"] == n_refs and speed["warmup_batches"] == 1
        assert speed["sentences_per_s"] > 0 and speed["target_tokens_per_s"] > 0
        assert speed["max_tokens"] == 2000
        assert speed["runs"] == 3 and speed["seconds"] == min(speed["run_seconds"])
    assert evaluation["runtime"]["device"] == "cpu" and evaluation["runtime"]["threads"] == 1
    size = evaluation["model_size"]
    assert 0 < size["stripped_checkpoint_bytes"] < size["checkpoint_bytes"]
    assert size["parameters"] < size["fairseq_logged"]


def test_bleu_equals_sacrebleu_command_line(evaluation, data):
    ref = data / "raw" / "test.en"
    for mode in ("beam", "greedy"):
        bleu, chrf = sacrebleu_cli(ref, Path(evaluation[mode]["hypotheses"]))
        assert evaluation[mode]["bleu"]["score"] == pytest.approx(bleu, abs=1e-4)
        assert evaluation[mode]["chrf"]["score"] == pytest.approx(chrf, abs=1e-4)


def test_extra_set_from_raw_text_decodes_like_the_binarised_split(teacher, data):
    """A raw source (normalised + spm-encoded on the fly) gives the binarised split's hypotheses."""
    codec = TextCodec(data / "spm" / "spm.model", "de", "en")
    encoded = [codec.encode(line) for line in read_lines(data / "raw" / "test.de")]
    assert encoded == read_lines(data / "spm" / "test.de")
    batch, greedy = BatchSettings(max_tokens=1000), SearchOptions(beam=1, max_len_a=0, max_len_b=5)
    from_bin = decode_dataset(teacher, split_dataset(teacher, "test"), greedy, batch).hypotheses
    from_text = decode_dataset(teacher, lines_dataset(teacher, encoded), greedy, batch).hypotheses
    assert [n[0].tokens for n in from_text] == [n[0].tokens for n in from_bin]


def test_decode_lines_returns_nbest_in_input_order(teacher, data):
    lines = read_lines(data / "spm" / "test.de")[:8]
    gen = SearchOptions(beam=3, nbest=3, max_len_a=0, max_len_b=6)
    one = BatchSettings(batch_size=1)  # each line alone: outputs cannot depend on batch neighbours
    forward = decode_lines(teacher, lines, gen, one)
    backward = decode_lines(teacher, lines[::-1], gen, one)
    assert [[h.tokens for h in n] for n in forward] == [[h.tokens for h in n] for n in backward[::-1]]
    assert all(len(n) == 3 for n in forward)
    assert all(n[0].score >= n[1].score >= n[2].score for n in forward)
    assert forward[5][0].tokens == decode_lines(teacher, [lines[5]], gen, one)[0][0].tokens


def test_parameter_count_of_tiny_architecture_is_hand_computed(teacher, data):
    arch = dict(zip(TINY_ARCH[1::2], TINY_ARCH[2::2], strict=False))
    assert "--share-all-embeddings" in TINY_ARCH
    d, ffn = int(arch["--encoder-embed-dim"]), int(arch["--encoder-ffn-embed-dim"])
    enc_layers, dec_layers = int(arch["--encoder-layers"]), int(arch["--decoder-layers"])
    vocab = len(read_lines(data / "bin" / "dict.en.txt")) + 4  # + <s> <pad> </s> <unk>
    attention = 4 * (d * d + d)  # q, k, v, out projections with biases
    layer_norm = 2 * d
    feed_forward = d * ffn + ffn + ffn * d + d
    encoder_layer = attention + layer_norm + feed_forward + layer_norm
    decoder_layer = attention + layer_norm + attention + layer_norm + feed_forward + layer_norm
    # one embedding matrix shared by encoder input, decoder input and output projection;
    # sinusoidal positions have no parameters; post-norm: no final layer norms
    expected = vocab * d + enc_layers * encoder_layer + dec_layers * decoder_layer
    counts = count_parameters(teacher.model)
    assert counts["parameters"] == expected
    assert counts["embedding_parameters"] == vocab * d
    # fairseq's own count adds each encoder layer's fast-path copies (and would count nothing twice else)
    copies = enc_layers * (3 * d * d + 3 * d + d * d + d + d * ffn + ffn + ffn * d + d)
    assert counts["fairseq_logged"] == expected + copies


def test_stripped_checkpoint_is_smaller_and_still_loads(tiny_teacher, teacher, data, tmp_path):
    stripped = strip_checkpoint(tiny_teacher, tmp_path / "model.pt")
    assert stripped.stat().st_size < tiny_teacher.stat().st_size
    state = torch.load(stripped, map_location="cpu", weights_only=False)
    assert "last_optimizer_state" not in state and "criterion" not in state
    assert not fastpath_copies(state["model"])
    reloaded = load_model(stripped, data_dir=data / "bin", cpu=True)
    original = dict(teacher.model.named_parameters())
    for name, p in reloaded.model.named_parameters():
        assert torch.equal(p, original[name]), name
    assert count_parameters(reloaded.model) == count_parameters(teacher.model)
    lines = read_lines(data / "spm" / "test.de")[:8]
    before = [n[0].tokens for n in decode_lines(teacher, lines, FAST_GEN)]
    assert [n[0].tokens for n in decode_lines(reloaded, lines, FAST_GEN)] == before


def test_translate_round_trips_raw_german_to_plain_text(tiny_teacher, data):
    """Only --model: the spm model, dictionaries and languages are found from the checkpoint."""
    source = ["Ein Mann fährt mit dem Fahrrad.", "", "„Zwei Hunde“ spielen im Schnee…", *read_lines(data / "raw" / "test.de")[:3]]
    proc = run_stage("pipeline.translate", "--model", str(tiny_teacher), *FAST, "--cpu", stdin="\n".join(source) + "\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(source)
    out = out[:-1]
    assert out[1] == ""
    for line in out[:1] + out[2:]:
        assert line.strip()
        assert "▁" not in line and "@@" not in line and "<unk>" not in line and "</s>" not in line


def test_translate_errors_are_clear(tmp_path):
    proc = run_stage("pipeline.translate", "--model", "work/models/teacher/model.pt", stdin="Hallo\n", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "snakemake work/models/teacher/model.pt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_rejects_misaligned_reference(tiny_teacher, data, tmp_path, monkeypatch):
    from pipeline import evaluate

    ref = tmp_path / "ref.en"
    ref.write_text("only one line\n")
    monkeypatch.setattr(sys, "argv", [
        "evaluate", "--model", str(tiny_teacher), "--set", "test", "--split", "test", "--ref", str(ref),
        "--json", str(tmp_path / "out.json"), "--cpu",
    ])
    with pytest.raises(DataError, match="1 reference lines"):
        evaluate.main()
    assert not (tmp_path / "out.json").exists()


def test_checkpoint_trained_with_plugins_elsewhere_loads(tiny_teacher, teacher, data, tmp_path):
    """A student checkpoint names --user-dir (another checkout's path) and a KD criterion: decoding ignores both."""
    state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    state["cfg"]["common"]["user_dir"] = "/elsewhere/checkout/fairseq_plugins"
    state["cfg"]["criterion"] = {"_name": "word_kd", "alpha": 0.5}
    torch.save(state, tmp_path / "student.pt")
    student = load_model(tmp_path / "student.pt", cpu=True)
    lines = read_lines(data / "spm" / "test.de")[:4]
    assert [n[0].tokens for n in decode_lines(student, lines, FAST_GEN)] == [
        n[0].tokens for n in decode_lines(teacher, lines, FAST_GEN)
    ]


def test_fastest_of_keeps_first_hypotheses_and_fastest_timing():
    from pipeline.decoding import Decoded, DecodeStats, Hypothesis
    from pipeline.evaluate import fastest_of

    passes = iter([3.0, 1.5, 2.0])

    def decode():
        seconds = next(passes)
        return Decoded(hypotheses=[[Hypothesis(f"pass {seconds}", 0.0, 2)]], stats=DecodeStats(sentences=3, seconds=seconds))

    decoded, seconds = fastest_of(decode, 3)
    assert seconds == [3.0, 1.5, 2.0]
    assert decoded.stats.seconds == 1.5 and decoded.stats.sentences_per_s == 2.0
    assert decoded.hypotheses[0][0].tokens == "pass 3.0"
    with pytest.raises(ConfigError, match="speed-runs 0"):
        fastest_of(decode, 0)


def test_evaluate_rejects_an_extra_set_line_the_model_cannot_take(tiny_teacher, data, tmp_path):
    """An extra set (raw text, encoded by the evaluation) follows the data stage's policy: an error, never cut."""
    src, ref = tmp_path / "long.de", tmp_path / "long.en"
    src.write_text("Ein Hund läuft.\n" + " ".join(["Hund"] * 1100) + "\nEine Katze.\n", encoding="utf-8")
    ref.write_text("A dog runs.\nDogs.\nA cat.\n", encoding="utf-8")
    out = tmp_path / "long.json"
    proc = run_stage(
        "pipeline.evaluate", "--model", str(tiny_teacher), "--set", "long", "--src-text", str(src), "--ref", str(ref),
        "--spm", str(data / "spm" / "spm.model"), "--json", str(out), *FAST, "--cpu",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {src}: line 2: " in proc.stderr and "more than the 1023 a model takes" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_lenpen_chooses_the_best_dev_bleu_and_evaluate_decodes_with_it(tiny_teacher, evaluation, data, tmp_path):
    """pipeline.lenpen scores each candidate as pipeline.evaluate does at that penalty; --lenpen-from applies the choice."""
    common = ["--model", str(tiny_teacher), "--set", "test", "--split", "test", "--data", str(data / "bin"),
              "--ref", str(data / "raw" / "test.en"), "--spm", str(data / "spm" / "spm.model"),
              "--beam", "2", "--max-len-a", "0", "--max-len-b", "8", "--max-tokens", "2000", "--threads", "1", "--cpu"]
    chosen_json = tmp_path / "lenpen.json"
    proc = run_stage("pipeline.lenpen", *common, "--candidates", "1.0", "0.2", "3.0", "--json", str(chosen_json),
                     "--hyps-dir", str(tmp_path / "hyps"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = json.loads(chosen_json.read_text())
    candidates = {c["lenpen"]: c for c in chosen["candidates"]}
    assert list(candidates) == [1.0, 0.2, 3.0]
    # at the evaluation's own penalty (1.0) the same BLEU as the evaluation's beam
    assert candidates[1.0]["bleu"] == pytest.approx(evaluation["beam"]["bleu"]["score"], abs=1e-9)
    best = max(c["bleu"] for c in chosen["candidates"])
    assert chosen["lenpen"] == next(c["lenpen"] for c in chosen["candidates"] if c["bleu"] == best)
    assert chosen["search"] == {"beam": 2, "max_len_a": 0.0, "max_len_b": 8} and chosen["set"] == "test"
    for value, c in candidates.items():
        hyps = tmp_path / "hyps" / f"test.lp{value:g}.txt"
        assert sacrebleu_cli(data / "raw" / "test.en", hyps) == pytest.approx([c["bleu"], c["chrf"]], abs=1e-4)
    # pipeline.evaluate --lenpen-from decodes with the chosen penalty: its beam output is that candidate's
    out = tmp_path / "eval.json"
    proc = run_stage("pipeline.evaluate", *common, "--lenpen", "7.0", "--lenpen-from", str(chosen_json),
                     "--json", str(out), "--modes", "beam", "--speed-runs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["beam"]["settings"]["lenpen"] == chosen["lenpen"]
    assert result["beam"]["bleu"]["score"] == pytest.approx(candidates[chosen["lenpen"]]["bleu"], abs=1e-9)
    assert read_lines(result["beam"]["hypotheses"]) == read_lines(tmp_path / "hyps" / f"test.lp{chosen['lenpen']:g}.txt")


def test_lenpen_choice_and_its_errors(tmp_path):
    from pipeline.decoding.options import read_chosen_lenpen
    from pipeline.lenpen import check_candidates, choose

    tie = [{"lenpen": 1.3, "bleu": 30.0}, {"lenpen": 1.0, "bleu": 30.0}, {"lenpen": 2.0, "bleu": 29.0}]
    assert choose(tie)["lenpen"] == 1.3  # a tie: the first listed
    with pytest.raises(ConfigError, match="each length penalty once"):
        check_candidates([1.0, 1.3, 1.0])
    with pytest.raises(DataError, match="no such file"):
        read_chosen_lenpen(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text, match in (("{", "not a readable JSON"), ('{"candidates": []}', "no chosen length penalty"),
                        ('{"lenpen": "1.3"}', "no chosen length penalty"), ('{"lenpen": true}', "no chosen")):
        bad.write_text(text)
        with pytest.raises(DataError, match=match) as err:
            read_chosen_lenpen(bad)
        assert str(bad) in str(err.value)
    bad.write_text('{"lenpen": 1.6}')
    assert read_chosen_lenpen(bad) == 1.6
