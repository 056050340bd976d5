"""The decoding layer: one set of search options and flags, one Backend interface for fairseq and CTranslate2,
and stage CLIs (evaluate, export, translate, decode_shard) that work with any backend without knowing which."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import REPO, data_dir

from pipeline.corpus import read_lines, write_lines
from pipeline.decoding import (
    BatchSettings,
    Decoded,
    DecodeStats,
    Hypothesis,
    SearchOptions,
    add_decoding_args,
    open_backend,
)
from pipeline.decoding.ct2_dir import META, SPM
from pipeline.errors import BackendError, ConfigError, DataError

LINES = 8


def run_stage(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], text=True, capture_output=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def data(smoke_data) -> Path:
    return data_dir(smoke_data)


@pytest.fixture(scope="module")
def converted(tiny_teacher, data, tmp_path_factory) -> Path:
    """The tiny teacher through the rules' command line: python -m pipeline.ct2 convert ... (float32 weights)."""
    out = tmp_path_factory.mktemp("ct2") / "teacher"
    proc = run_stage("pipeline.ct2", "convert", "--model", str(tiny_teacher), "--data", str(data / "bin"),
                     "--spm", str(data / "spm" / "spm.model"), "--out", str(out), "--quantization", "float32",
                     "--no-normalize")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def backends(tiny_teacher, converted) -> dict:
    return {
        "fairseq": open_backend(tiny_teacher, cpu=True, threads=1),
        "ctranslate2": open_backend(converted, compute_type="float32", threads=1, cpu=True),
    }


# ------------------------------------------------------------------------------------------------
# One declaration of the search options


def full_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_decoding_args(parser, speed_runs=True)
    return parser


def test_search_options_defaults_are_the_cli_defaults():
    parser = full_parser()
    for f in fields(SearchOptions):
        if f.name in ("min_len", "unkpen"):  # not flags: fairseq's defaults, the same for every CLI
            continue
        assert parser.get_default(f.name) == f.default, f.name
    assert SearchOptions.from_args(parser.parse_args([])) == SearchOptions()
    d = SearchOptions()
    assert (d.beam, d.nbest, d.lenpen, d.max_len_a, d.max_len_b) == (5, 1, 1.0, 1.2, 10)
    # no batch named: the backend's default batch; without one, fairseq's 6000 tokens
    assert (d.max_tokens, d.batch_size) == (None, None) and d.batch() == BatchSettings(max_tokens=6000, batch_size=None)
    assert d.batch(BatchSettings(1000, 8)) == BatchSettings(1000, 8)
    given = SearchOptions.from_args(parser.parse_args(["--batch-size", "16"]))
    assert given.batch(BatchSettings(1000, 8)) == BatchSettings(max_tokens=None, batch_size=16)  # one setting, as given
    args = parser.parse_args(["--beam", "4", "--nbest", "2", "--max-len-a", "0", "--max-tokens", "500", "--backend",
                              "ctranslate2", "--compute-type", "cpu=int8,cuda=float16", "--vmap", "--speed-runs", "3"])
    assert SearchOptions.from_args(args) == SearchOptions(beam=4, nbest=2, max_len_a=0.0, max_tokens=500)
    with pytest.raises(ConfigError, match="nbest must be between 1 and the beam size 2"):
        SearchOptions(beam=2, nbest=3)


@pytest.mark.parametrize("module", ["pipeline.distill.decode_shard", "pipeline.evaluate", "pipeline.export",
                                    "pipeline.translate"])
def test_every_decoding_cli_takes_the_shared_flags(module):
    proc = run_stage(module, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--beam", "--lenpen", "--max-len-a", "--max-len-b", "--max-tokens", "--batch-size", "--threads",
                 "--cpu", "--compute-type", "--inter-threads", "--intra-threads"):
        assert proc.stdout.count(f"  {flag} ") + proc.stdout.count(f"  {flag}\n") + proc.stdout.count(f", {flag}") == 1, (module, flag)
    assert "backend's default batch" in proc.stdout  # the batch semantics, documented once for every CLI


# ------------------------------------------------------------------------------------------------
# Both backends through the same calls


def test_both_backends_open_and_describe_themselves_alike(backends, converted, tiny_teacher, data):
    fairseq, ct2 = backends["fairseq"], backends["ctranslate2"]
    assert (fairseq.name, ct2.name) == ("fairseq", "ctranslate2")
    for backend in backends.values():
        assert (backend.source_lang, backend.target_lang, backend.device) == ("de", "en", "cpu")
        assert backend.spm_model().read_bytes() == (data / "spm" / "spm.model").read_bytes()
        assert backend.runtime_info()["device"].startswith("cpu")
        assert backend.model_record()["checkpoint"] == str(tiny_teacher)
        assert backend.decode([], SearchOptions()).hypotheses == []
    assert fairseq.model_size()["parameters"] > 0
    assert ct2.model_size()["model_bin_bytes"] == (converted / "model.bin").stat().st_size
    assert ct2.model_record()["compute_type"] == "float32" and ct2.runtime_info()["compute_type"] == "float32"
    # the conversion recorded --no-normalize; a checkpoint records nothing (the CLI flag decides)
    assert ct2.normalize_punctuation is False and fairseq.normalize_punctuation is True
    assert fairseq.default_batch == BatchSettings(max_tokens=6000)
    assert ct2.default_batch == BatchSettings(max_tokens=1000, batch_size=8)  # a plain conversion on CPU
    # a binarised split: fairseq's data directory; CTranslate2 reads text
    from pipeline.decoding.fairseq_backend import decode_dataset, split_dataset

    split, text = fairseq.read_split("test"), read_lines(data / "spm" / "test.de")
    assert len(split) == len(text) and sum(a == b for a, b in zip(split, text, strict=True)) > 0.9 * len(text)  # <unk>
    greedy = SearchOptions(beam=1, max_len_a=0, max_len_b=5, max_tokens=1000)
    expected = decode_dataset(fairseq.lm, split_dataset(fairseq.lm, "test"), greedy).hypotheses
    assert [n[0].tokens for n in fairseq.decode(split, greedy).hypotheses] == [n[0].tokens for n in expected]
    with pytest.raises(BackendError, match="reads text, not a binarised split"):
        ct2.read_split("test")


def test_float32_backends_give_the_same_nbest_lists(backends, data):
    lines = read_lines(data / "spm" / "test.de")[:LINES]
    greedy = SearchOptions(beam=1, max_len_a=1.2, max_len_b=10)
    best = {name: [n[0] for n in b.decode(lines, greedy).hypotheses] for name, b in backends.items()}
    assert [h.tokens for h in best["ctranslate2"]] == [h.tokens for h in best["fairseq"]]
    assert [h.length for h in best["ctranslate2"]] == [h.length for h in best["fairseq"]]
    for a, b in zip(best["ctranslate2"], best["fairseq"], strict=True):
        assert a.score == pytest.approx(b.score, abs=0.05)

    beam = SearchOptions(beam=3, nbest=3, max_len_a=0, max_len_b=20, batch_size=1)  # each line alone in its batch
    decoded = {name: b.decode(lines, beam, warmup=True) for name, b in backends.items()}
    for name, result in decoded.items():
        assert result.stats.sentences == LINES and result.stats.batches == LINES and result.stats.warmup_batches == 1, name
        assert len(result.hypotheses) == LINES
        for nbest in result.hypotheses:
            assert len(nbest) == 3
            assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
            assert all(h.length == len(h.tokens.split()) for h in nbest)
    assert [n[0].tokens for n in decoded["ctranslate2"].hypotheses] == [n[0].tokens for n in decoded["fairseq"].hypotheses]


def test_open_backend_errors_are_clear(tmp_path):
    from pipeline.decoding import backend_from_args
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="no such file or directory"):
        open_backend(tmp_path / "none.pt")
    with pytest.raises(ModelError, match="without model.pt \\(fairseq\\) or model.bin \\(CTranslate2\\)"):
        open_backend(tmp_path)
    parser = full_parser()
    parser.add_argument("--model")
    with pytest.raises(ConfigError, match="needs --ct2-model DIR"):
        backend_from_args(parser.parse_args(["--backend", "ctranslate2"]))
    with pytest.raises(ConfigError, match="--model CHECKPOINT is required"):
        backend_from_args(parser.parse_args([]))


# ------------------------------------------------------------------------------------------------
# The stage CLIs never branch on the backend: a third backend, unknown to all of them, works in each


class EchoBackend:
    """A backend no CLI knows by name: its best hypothesis is the source, its batch default 77 tokens."""

    name = "echo"
    device = "cpu"
    data_dir = None
    normalize_punctuation = True
    default_batch = BatchSettings(max_tokens=77)

    def __init__(self, spm: Path, path: Path = Path("echo/model")):
        self.path, self.source_lang, self.target_lang, self._spm = path, "de", "en", spm
        self.calls: list[SearchOptions] = []

    def decode(self, lines, options, warmup=False):
        self.calls.append(options)
        hyps = [[Hypothesis(line, -1.0 - k, len(line.split())) for k in range(options.nbest)] for line in lines]
        return Decoded(hyps, DecodeStats(sentences=len(lines), seconds=0.5, batches=1, warmup_batches=int(warmup)))

    def read_split(self, split):
        raise BackendError("echo: no binarised splits")

    def spm_model(self, override=None):
        return Path(override) if override else self._spm

    def describe_device(self):
        return "cpu (echo)"

    def runtime_info(self):
        return {"backend": "echo", "device": "cpu", "compute_type": "echo", "requested_compute_type": "echo",
                "inter_threads": 1, "intra_threads": 1}

    def model_record(self):
        return {"checkpoint": str(self.path), "backend": "echo"}

    def model_size(self):
        return {"echo_bytes": 1}


@pytest.fixture
def echo(data) -> EchoBackend:
    return EchoBackend(data / "spm" / "spm.model")


def run_main(monkeypatch, module, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


SPEC = {"name": "student_seq_kd", "variant": "seq_kd", "preset": "tiny", "alpha": None, "temperature": None, "seed": 1,
        "teacher": "teacher", "targets": "distilled", "criterion": "label_smoothed_cross_entropy",
        "train_data": "work/distill/bin", "spm": "work/data/spm/spm.model", "src": "de", "tgt": "en"}


def test_evaluate_works_with_any_backend_and_copies_the_spec(monkeypatch, echo, data, tmp_path):
    from pipeline import evaluate

    monkeypatch.setattr(evaluate, "backend_from_args", lambda args: echo)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "test.json"
    run_main(monkeypatch, evaluate, ["--set", "test", "--src-pieces", str(data / "spm" / "test.de"), "--ref",
                                     str(data / "raw" / "test.en"), "--json", str(out), "--beam", "4",
                                     "--speed-runs", "2", "--spec", str(spec)])
    result = json.loads(out.read_text())
    n = len(read_lines(data / "raw" / "test.en"))
    assert result["model"] == "echo" and result["checkpoint"] == "echo/model" and result["backend"] == "echo"
    assert result["runtime"]["backend"] == "echo" and result["model_size"] == {"echo_bytes": 1}
    assert result["spec"] == SPEC
    assert result["beam"]["settings"]["beam"] == 4 and result["greedy"]["settings"]["beam"] == 1
    assert result["beam"]["speed"]["max_tokens"] == 77  # the backend's default batch, asked of the backend
    assert result["beam"]["speed"]["runs"] == 2 and result["sentences"] == n
    assert [o.beam for o in echo.calls] == [4, 4, 1, 1]
    assert len(read_lines(Path(result["beam"]["hypotheses"]))) == n
    assert result["beam"]["bleu"]["score"] < 5  # German "translations" of English references

    missing, broken = tmp_path / "none.json", tmp_path / "broken.json"
    broken.write_text("{not json")
    for path, message in ((missing, "no such file"), (broken, "not a readable JSON file")):
        with pytest.raises(DataError, match=f"--spec {path}: {message}"):
            run_main(monkeypatch, evaluate, ["--set", "test", "--src-pieces", str(data / "spm" / "test.de"), "--ref",
                                             str(data / "raw" / "test.en"), "--json", str(out), "--spec", str(path)])


def test_translate_works_with_any_backend(monkeypatch, echo, data, tmp_path):
    from pipeline import translate

    monkeypatch.setattr(translate, "backend_from_args", lambda args: echo)
    source = ["Ein Mann fährt mit dem Fahrrad.", "", *read_lines(data / "raw" / "test.de")[:3]]
    write_lines(tmp_path / "in.de", source)
    run_main(monkeypatch, translate, ["--model", "echo", "-i", str(tmp_path / "in.de"), "-o", str(tmp_path / "out.en"),
                                      "--beam", "2", "--max-tokens", "300"])
    out = read_lines(tmp_path / "out.en")
    assert len(out) == len(source) and out[1] == ""
    assert out[0] == "Ein Mann fährt mit dem Fahrrad."  # the echo, through spm and Moses and back
    assert echo.calls == [SearchOptions(beam=2, max_tokens=300)]


def test_decode_shard_works_with_any_backend(monkeypatch, echo, data, tmp_path):
    from pipeline.distill import decode_shard

    monkeypatch.setattr(decode_shard, "backend_from_args", lambda args: echo)
    from pipeline.distill.shard_index import build_index

    files = {"ids": data / "clean" / "train.ids", "src_spm": data / "spm" / "train.de", "ref_spm": data / "spm" / "train.en",
             "src_text": data / "clean" / "train.de", "ref_text": data / "clean" / "train.en"}
    index = build_index(files, shard_size=4)
    (tmp_path / "index.json").write_text(json.dumps(index))
    shards = str(index["shards"])
    out = tmp_path / f"shard000-of-{shards}.jsonl"
    run_main(monkeypatch, decode_shard, ["--model", "echo", "--data", str(data / "bin"), "--index",
                                         str(tmp_path / "index.json"), "--shard", "0", "--num-shards", shards,
                                         "--out", str(out), "--beam", "3", "--nbest", "2"])
    records = [json.loads(line) for line in read_lines(out)]
    source = read_lines(data / "spm" / "train.de")
    assert records and [r["hyps"][0]["text"] for r in records] == source[: len(records)]
    assert all(len(r["hyps"]) == 2 for r in records)
    assert echo.calls == [SearchOptions(beam=3, nbest=2)]


def test_export_measures_through_the_backend_and_records_spec_and_checkpoint_size(monkeypatch, echo, data, tmp_path):
    from pipeline import export

    def fake_convert(checkpoint, out, data_dir=None, spm=None, quantization="float32", extra_meta=None, vmap=None):
        out.mkdir(parents=True)
        (out / SPM).write_bytes((data / "spm" / "spm.model").read_bytes())
        meta = {"source_lang": "de", "target_lang": "en", "quantization": quantization, "checkpoint": str(checkpoint),
                "ctranslate2": "echo", **(extra_meta or {})}
        (out / META).write_text(json.dumps(meta))
        return out

    opened = []
    monkeypatch.setattr(export, "convert", fake_convert)
    monkeypatch.setattr(export, "open_backend", lambda path, **kw: opened.append(kw) or echo)
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({
        "beam": {"bleu": {"score": 1.0}, "speed": {"sentences_per_s": 10.0, "target_tokens_per_s": 100.0}},
        "runtime": {"device": "cpu"}, "model_size": {"parameters": 10, "stripped_checkpoint_bytes": 2_500_000},
    }))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "export" / "student"
    run_main(monkeypatch, export, ["--model", "work/models/student/model.pt", "--out", str(out), "--src-pieces",
                                   str(data / "spm" / "test.de"), "--ref", str(data / "raw" / "test.en"),
                                   "--compute-types", "float32", "--fairseq-eval", str(evaluation), "--spec", str(spec),
                                   "--batch-size", "4", "--threads", "1"])
    meta = json.loads((out / META).read_text())
    assert opened == [{"compute_type": "float32", "threads": 1, "inter_threads": None, "intra_threads": None,
                       "cpu": False}]
    assert meta["spec"] == SPEC and meta["name"] == "student"
    assert meta["decoding"]["batch_size"] == 4 and meta["decoding"]["max_tokens"] is None
    assert meta["evaluation"]["fairseq"]["checkpoint_bytes"] == 2_500_000  # model_size's key, read right
    readme = (out / "README.md").read_text()
    assert "the stripped fairseq checkpoint: 2.5 MB" in readme
    assert '- variant: "seq_kd"' in readme and "- seed: 1" in readme
