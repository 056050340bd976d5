"""The data stage: validation errors, cleaning counts, config schema, and `snakemake data` for real."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MIRROR, data_dir, snakemake, write_config

from pipeline.clean import CleanConfig, clean
from pipeline.corpus import read_parallel
from pipeline.errors import DataError


def run_stage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def files_args(tmp: Path, train_src: str | bytes, train_tgt: str | bytes, gz: bool = False) -> list[str]:
    ext = ".gz" if gz else ""
    paths = {
        "train-src": write(tmp / f"in/train.de{ext}", train_src),
        "train-tgt": write(tmp / f"in/train.en{ext}", train_tgt),
        "dev-src": write(tmp / "in/dev.de", "ein Hund\n"),
        "dev-tgt": write(tmp / "in/dev.en", "a dog\n"),
        "test-src": write(tmp / "in/test.de", "eine Katze\n"),
        "test-tgt": write(tmp / "in/test.en", "a cat\n"),
    }
    return [arg for key, path in paths.items() for arg in (f"--{key}", str(path))]


def fetch_files(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_stage("pipeline.fetch", "files", "--src", "de", "--tgt", "en", "--out", str(tmp / "out"), *args)


def test_files_source_plain_and_gz(tmp_path: Path):
    proc = fetch_files(tmp_path, *files_args(tmp_path, "ein Mann\nzwei Frauen\n", "a man\ntwo women\n", gz=True))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/train.en").read_text() == "a man\ntwo women\n"
    assert (tmp_path / "out/test.de").read_text() == "eine Katze\n"


def test_misaligned_corpus_names_both_files_and_counts(tmp_path: Path):
    proc = fetch_files(tmp_path, *files_args(tmp_path, "a\nb\nc\n", "x\ny\n"))
    assert proc.returncode == 2
    assert "train.de has 3 lines" in proc.stderr and "train.en has 2" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written after a validation error"


def test_invalid_utf8_names_file_and_line(tmp_path: Path):
    proc = fetch_files(tmp_path, *files_args(tmp_path, "gut\nsch\xf6n\n".encode("latin-1"), "good\nnice\n"))
    assert proc.returncode == 2
    assert "train.de: line 2: invalid UTF-8" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_empty_split_is_rejected(tmp_path: Path):
    proc = fetch_files(tmp_path, *files_args(tmp_path, "", ""))
    assert proc.returncode == 2
    assert "train.de: empty file" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_read_parallel_reports_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="nope.de: no such file"):
        read_parallel(tmp_path / "nope.de", tmp_path / "nope.en", "dev")


@pytest.mark.skipif(not MIRROR.is_dir(), reason="Multi30k mirror not present")
def test_mirror_checksum_mismatch_is_rejected(tmp_path: Path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR, mirror)
    (mirror / "val.en.gz").write_bytes(gzip.compress(b"tampered\n"))
    proc = run_stage("pipeline.fetch", "multi30k", "--src", "de", "--tgt", "en", "--mirror", str(mirror),
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "val.en.gz: sha256" in proc.stderr and "does not match" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_language_pair(tmp_path: Path):
    proc = run_stage("pipeline.fetch", "multi30k", "--src", "de", "--tgt", "cs", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "language 'cs' not available" in proc.stderr


def test_cleaning_counts_each_filter():
    src = [
        "ein Hund läuft",          # kept
        "",                         # empty
        " ".join(["wort"] * 12),    # too long (max 10)
        "ja",                       # length ratio 1:5
        "Berlin",                   # identical
        "ein Hund läuft",           # duplicate of the first pair
        "eine Katze schläft",       # kept
    ]
    tgt = ["a dog runs", "something", "words", "yes yes yes yes yes", "Berlin", "a dog runs", "a cat sleeps"]
    kept, stats = clean(src, tgt, CleanConfig(max_tokens=10, max_length_ratio=3.0))
    assert kept == [0, 6]
    assert stats["removed"] == {"empty": 1, "too_long": 1, "length_ratio": 1, "identical": 1, "duplicate": 1}
    assert stats["input"] == 7 and stats["kept"] == 2

    kept, stats = clean(src, tgt, CleanConfig(max_tokens=10, remove_identical=False, remove_duplicates=False))
    assert kept == [0, 4, 5, 6]


def test_normalisation_keeps_line_count(tmp_path: Path):
    text = "« Hallo » , sagte er…\n„Zitat“  mit   Leerzeichen\n\n"
    src = write(tmp_path / "in.de", text)
    proc = run_stage("pipeline.normalize", "--lang", "de", str(src), str(tmp_path / "out.de"))
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out.de").read_text().split("\n")[:-1]
    assert len(out) == 3
    assert out[0] != "« Hallo » , sagte er…"  # Moses rewrote the punctuation


def test_schema_error_names_the_key(tmp_path: Path):
    cfg = write_config(tmp_path, {"data": {"spm": {"vocab_size": -5}}})
    proc = snakemake(tmp_path, "-n", "data", config=cfg, check=False)
    assert proc.returncode != 0
    assert "vocab_size" in proc.stdout and "-5" in proc.stdout


def test_bad_input_through_snakemake_leaves_no_downstream_output(tmp_path: Path):
    args = files_args(tmp_path, "a\nb\nc\n", "x\ny\n")
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    files = {
        split: {"src": pairs[f"--{split}-src"], "tgt": pairs[f"--{split}-tgt"]} for split in ("train", "dev", "test")
    }
    cfg = write_config(tmp_path, {"data": {"source": "files", "files": files}})
    proc = snakemake(tmp_path, "data", config=cfg, check=False)
    assert proc.returncode != 0
    assert "has 3 lines" in proc.stdout  # the failed rule's log is shown
    data = data_dir(tmp_path)
    assert not (data / "raw").exists() or not any((data / "raw").iterdir())
    assert not (data / "bin").exists()


def test_snakemake_data_on_multi30k_slice(smoke_data: Path):
    data = data_dir(smoke_data)
    stats = json.loads((data / "clean_stats.json").read_text())
    assert stats["input"] == 2000
    assert stats["kept"] == 2000 - sum(stats["removed"].values())
    kept = (data / "clean/train.en").read_text().splitlines()
    assert len(kept) == stats["kept"]
    ids = [int(x) for x in (data / "clean/train.ids").read_text().split()]
    assert ids == sorted(ids) and len(ids) == len(kept)

    from fairseq.data import data_utils
    from fairseq.data.dictionary import Dictionary

    bin_dir = data / "bin"
    assert (bin_dir / "dict.de.txt").read_text() == (bin_dir / "dict.en.txt").read_text(), "joined dictionary"
    dictionary = Dictionary.load(str(bin_dir / "dict.en.txt"))
    for split, n in (("train", stats["kept"]), ("valid", 100), ("test", 100)):
        dataset = data_utils.load_indexed_dataset(str(bin_dir / f"{split}.de-en.en"), dictionary)
        assert len(dataset) == n, split
    # The first cleaned sentence survives spm encoding and binarisation unchanged.
    first = dictionary.string(data_utils.load_indexed_dataset(str(bin_dir / "train.de-en.en"), dictionary)[0])
    assert first.replace(" ", "").replace("\u2581", " ").strip() == kept[0]
    for rule in ("fetch_corpus", "clean_train", "spm_train", "binarize"):
        assert (smoke_data / f"logs/data/{data.name}/{rule}.log").exists()
        assert (smoke_data / f"benchmarks/data/{data.name}/{rule}.tsv").exists()


def test_overlong_dev_line_stops_the_data_stage_naming_file_and_line(tmp_path: Path):
    """A dev line longer than the models take fails at data time (file, 1-based line), not in training."""
    dev = {lang: gzip.open(MIRROR / f"val.{lang}.gz").read().decode().splitlines()[:50] for lang in ("de", "en")}
    dev["en"][6] = " ".join(["dog"] * 1500)
    for lang, lines in dev.items():
        (tmp_path / f"dev.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = {
        "train": {"src": str(MIRROR / "train.de.gz"), "tgt": str(MIRROR / "train.en.gz")},
        "dev": {"src": str(tmp_path / "dev.de"), "tgt": str(tmp_path / "dev.en")},
        "test": {"src": str(MIRROR / "test_2016_flickr.de.gz"), "tgt": str(MIRROR / "test_2016_flickr.en.gz")},
    }
    cfg = write_config(tmp_path, {"data": {"source": "files", "files": files}})
    proc = snakemake(tmp_path, "data", config=cfg, check=False)
    assert proc.returncode != 0
    data = data_dir(tmp_path)
    assert f"error: {data.relative_to(tmp_path)}/norm/dev.en: line 7: " in proc.stdout  # the failed rule's log is shown
    assert "more than the 1023 a model takes" in proc.stdout
    assert not (data / "spm/dev.en").exists() and not (data / "bin").exists()
