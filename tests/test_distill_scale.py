"""Scale: the streaming data stage and the per-shard distillation path (shard index, post-processing in the
shard jobs, streaming merge) against the whole-corpus implementations, on real smoke data."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MIRROR, REPO, data_dir

from pipeline.clean import CleanConfig, PartitionedDedup, clean, clean_pairs
from pipeline.corpus import read_lines
from pipeline.distill.shard_index import ShardIndex, build_index, line_offsets, shard_count, shard_input
from pipeline.distill.shards import shard_filename, shard_range
from pipeline.errors import DataError

ENV = dict(os.environ, PYTHONPATH=str(REPO))
OUTPUTS = ("train.de", "train.en", "train.ids", "train.de.txt", "train.en.txt", "stats.json")


def cli(module: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ------------------------------------------------------------------------------------------------
# Data stage: streaming, compact deduplication, process pools; output unchanged


def _reference_clean(src: list[str], tgt: list[str], cfg: CleanConfig) -> list[int]:
    """The previous implementation's semantics: a set of the exact (source, target) strings."""
    from pipeline.clean import pair_rejection

    seen, kept = set(), []
    for i, pair in enumerate(zip(src, tgt, strict=True)):
        if pair_rejection(*pair, cfg) is None and pair not in seen:
            seen.add(pair)
            kept.append(i)
    return kept


def test_partitioned_dedup_marks_every_later_occurrence_and_nothing_else(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5000, 40_000).astype(np.uint64)  # many repeats, within and across batches
    values[:3] = [2**64 - 1, 0, 2**64 - 1]  # the extremes of the digest range
    dedup = PartitionedDedup(tmp_path, partitions=7)  # not a power of two: partitions of unequal size
    for start in range(0, len(values), 997):
        dedup.add(values[start:start + 997])
    repeated = np.unpackbits(dedup.duplicates(), bitorder="little")[:len(values)]
    seen, expected = set(), []
    for value in values.tolist():
        expected.append(value in seen)
        seen.add(value)
    assert repeated.tolist() == [int(e) for e in expected]
    assert dedup.n == len(values) and dedup.distinct == len(seen)
    assert list(tmp_path.iterdir()) == []  # the partition files are gone once read


def test_clean_deduplicates_through_partition_files_in_its_temporary_directory(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    words = ["ein", "Hund", "läuft", "zwei", "Kinder", "spielen"]
    src = [" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(30_000)]
    tgt = [s.upper() + " ." for s in src]
    src[5], tgt[5] = "", "leer"  # filtered pairs do not take a digest ordinal
    made = []
    real_init = PartitionedDedup.__init__

    def spy(self, tmp_dir, partitions=256):
        made.append(tmp_dir)
        real_init(self, tmp_dir, partitions)

    monkeypatch.setattr(PartitionedDedup, "__init__", spy)
    stats: dict = {}
    kept = [i for i, _, _ in clean_pairs(lambda: zip(src, tgt, strict=True), CleanConfig(), stats, tmp_path)]
    assert kept == _reference_clean(src, tgt, CleanConfig())
    assert stats["removed"]["empty"] == 1 and stats["removed"]["duplicate"] == 29_999 - len(kept)
    assert stats["dedup"]["distinct_pairs"] == len(kept)
    assert len(made) == 1 and made[0].parent == tmp_path and not made[0].exists()

    def changing():  # the corpus grows between the two readings
        changing.calls += 1
        return zip(src + ["neu"] * changing.calls, tgt + ["new"] * changing.calls, strict=True)

    changing.calls = 0
    with pytest.raises(DataError, match="changed while it was being cleaned: 30000 pairs .* first reading, at least 30001 in the second"):
        list(clean_pairs(changing, CleanConfig(), {}, tmp_path))


@pytest.mark.skipif(not MIRROR.is_dir(), reason="Multi30k mirror not present")
def test_clean_streams_the_full_multi30k_training_set_as_before(tmp_path):
    src = MIRROR / "train.de.gz"
    tgt = MIRROR / "train.en.gz"
    out = {name: tmp_path / name for name in ("c.de", "c.en", "c.ids", "stats.json")}
    cli("pipeline.clean", "--src-in", src, "--tgt-in", tgt, "--src-out", out["c.de"], "--tgt-out", out["c.en"],
        "--ids-out", out["c.ids"], "--stats", out["stats.json"])
    stats = json.loads(out["stats.json"].read_text())
    assert stats["input"] == 29000 and stats["kept"] == 28995  # the README's figures
    assert stats["removed"] == {"empty": 0, "too_long": 0, "length_ratio": 2, "identical": 0, "duplicate": 3}
    assert stats["dedup"]["hash_bits"] == 64 and stats["dedup"]["distinct_pairs"] == 28995
    assert 0 < stats["dedup"]["expected_false_merges"] < 1e-10
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    kept = _reference_clean(src_lines, tgt_lines, CleanConfig())
    assert read_lines(out["c.ids"]) == [str(i) for i in kept]
    assert read_lines(out["c.de"]) == [src_lines[i] for i in kept]
    assert read_lines(out["c.en"]) == [tgt_lines[i] for i in kept]
    assert clean(src_lines, tgt_lines, CleanConfig())[0] == kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("extra_src, extra_tgt, message", [
    (1, 0, r"misaligned corpus, split 'train': \S+a\.de has 4 lines but \S+b\.en has 3"),
    (0, 2, r"misaligned corpus, split 'train': \S+a\.de has 3 lines but \S+b\.en has 5"),
])
def test_clean_streaming_reports_misalignment_and_writes_nothing(tmp_path, extra_src, extra_tgt, message):
    (tmp_path / "a.de").write_text("".join(f"satz {i}\n" for i in range(3 + extra_src)))
    (tmp_path / "b.en").write_text("".join(f"sentence {i}\n" for i in range(3 + extra_tgt)))
    out = tmp_path / "out"
    proc = cli("pipeline.clean", "--src-in", tmp_path / "a.de", "--tgt-in", tmp_path / "b.en", "--src-out", out / "c.de",
               "--tgt-out", out / "c.en", "--ids-out", out / "c.ids", "--stats", out / "s.json", check=False)
    assert proc.returncode == 2
    assert re.search(message, proc.stderr), proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_clean_streaming_reports_an_empty_file(tmp_path):
    (tmp_path / "a.de").write_text("")
    (tmp_path / "b.en").write_text("x\n")
    proc = cli("pipeline.clean", "--src-in", tmp_path / "a.de", "--tgt-in", tmp_path / "b.en", "--src-out", tmp_path / "c",
               "--tgt-out", tmp_path / "d", "--ids-out", tmp_path / "e", "--stats", tmp_path / "s", check=False)
    assert proc.returncode == 2 and "a.de: empty file: split 'train' has no lines" in proc.stderr


def test_normalize_and_spm_with_workers_give_the_data_stage_output(smoke_data, tmp_path):
    data = data_dir(smoke_data)
    cli("pipeline.normalize", "--lang", "de", "--workers", "2", data / "raw/train.de", tmp_path / "norm.de")
    assert (tmp_path / "norm.de").read_bytes() == (data / "norm/train.de").read_bytes()
    for command, source, expected in (("encode", data / "clean/train.en", data / "spm/train.en"),
                                      ("decode", data / "spm/train.en", None)):
        for workers in (1, 3):
            out = tmp_path / f"{command}{workers}"
            cli("pipeline.spm", command, "--model", data / "spm/spm.model", "--workers", workers, source, out)
            if expected is not None:
                assert out.read_bytes() == expected.read_bytes()
    assert (tmp_path / "decode1").read_bytes() == (tmp_path / "decode3").read_bytes()


def test_process_pool_keeps_order_over_many_chunks():
    from pipeline.streaming import ordered_map

    lines = [f"line {i} …" for i in range(2500)]
    got = list(ordered_map(_upper_factory, ("!",), iter(lines), workers=2, chunk_lines=7))
    assert got == [line.upper() + "!" for line in lines]


def _upper_factory(suffix: str):
    return lambda line: line.upper() + suffix


@pytest.mark.parametrize("in_kernel", [True, False])
def test_copy_lines_appends_in_order_and_counts_across_blocks(tmp_path, monkeypatch, in_kernel):
    import io

    import pipeline.streaming as streaming

    monkeypatch.setattr(streaming, "COPY_BLOCK", 5)  # newlines and file ends fall inside and between blocks
    calls = []
    if in_kernel:
        real = os.copy_file_range
        monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    else:  # where os.copy_file_range is missing (or refuses), the blocks go through user space
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    files = {"a": b"one\ntwo\n\nthree\n", "b": "vier ü\nfünf".encode(), "empty": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with (tmp_path / "out").open("wb") as out:
        out.write(b"head\n")  # buffered bytes go before the copied ones
        counts = [streaming.copy_lines(tmp_path / name, out) for name in ("a", "b", "empty", "a")]
        out.write(b"tail\n")
    assert counts == [(4, True), (1, False), (0, True), (4, True)]
    assert (tmp_path / "out").read_bytes() == b"head\n" + files["a"] + files["b"] + files["a"] + b"tail\n"
    assert len(calls) >= 3 if in_kernel else not calls  # (the empty file has nothing to copy)
    stream = io.BytesIO()  # no file descriptor: user space
    assert streaming.copy_lines(tmp_path / "a", stream) == (4, True) and stream.getvalue() == files["a"]


# ------------------------------------------------------------------------------------------------
# The shard index


def _write(path: Path, lines: list[str], newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end and lines else ""), encoding="utf-8")
    return path


def _files(tmp_path: Path, n: int) -> dict[str, Path]:
    rng = random.Random(n)
    ids = sorted(rng.sample(range(3 * n + 5), n))
    files = {"ids": _write(tmp_path / "train.ids", [str(i) for i in ids])}
    for role in ("src_spm", "ref_spm", "src_text", "ref_text"):
        files[role] = _write(tmp_path / role, [f"{role} {i} " + "ä" * rng.randrange(30) for i in ids])
    return files


def test_shard_count_from_the_shard_size():
    assert [shard_count(n, 700) for n in (0, 1, 700, 701, 1990, 2100, 2101)] == [1, 1, 1, 2, 3, 3, 4]
    assert shard_count(28995, 4000) == 8 and shard_count(50_000_000, 200_000) == 250
    with pytest.raises(DataError, match="shard size must be >= 1"):
        shard_count(10, 0)


@pytest.mark.parametrize("n, size", [(0, 5), (1, 5), (17, 5), (17, 1), (40, 7), (6, 100)])
def test_index_reads_each_shard_from_its_offsets(tmp_path, n, size):
    files = _files(tmp_path, n)
    index_path = tmp_path / "index.json"
    index_path.write_text(json.dumps(build_index(files, size)))
    index = ShardIndex.load(index_path)
    shards = shard_count(n, size)
    assert index.shards == shards and index.lines == n
    all_ids = [int(x) for x in read_lines(files["ids"])]
    for k in range(shards):
        start, end = shard_range(n, shards, k)
        assert end - start <= size
        ids, lines = shard_input(index_path, k, shards)
        assert ids == all_ids[start:end]
        assert lines == read_lines(files["src_spm"])[start:end]
        assert index.read("ref_text", k) == read_lines(files["ref_text"])[start:end]
    for rid in all_ids[:: max(1, n // 5)]:
        assert index.owner(rid) == next(k for k in range(shards) if rid in index.ids(k))
    assert index.owner(-1) is None and (n == 0 or index.owner(all_ids[-1] + 1) is None)


def test_line_offsets_without_a_final_newline(tmp_path):
    path = _write(tmp_path / "f", ["a", "bb", "", "ccc"], newline_at_end=False)
    assert line_offsets(path, [0, 1, 2, 3, 4, 9]) == [0, 2, 5, 6, 9, 9]


def test_index_rejects_unusable_corpora(tmp_path):
    files = _files(tmp_path, 10)
    _write(files["ids"], ["1", "3", "3"] + [str(i) for i in range(10, 17)])
    with pytest.raises(DataError, match=r"train\.ids: line 3: id 3 repeated: ids must increase"):
        build_index(files, 4)
    _write(files["ids"], [str(i) for i in range(9)])
    with pytest.raises(DataError, match=r"src_spm: 10 lines, but \S+train\.ids has 9 ids"):
        build_index(files, 4)
    files = _files(tmp_path, 10)
    index_path = tmp_path / "index.json"
    index_path.write_text(json.dumps(build_index(files, 4)))
    with pytest.raises(DataError, match=r"index\.json: the corpus has 3 shards \(10 lines, shard size 4\), this run has 8"):
        shard_input(index_path, 0, 8)
    with files["src_spm"].open("a") as f:
        f.write("one more line\n")
    with pytest.raises(DataError, match=r"src_spm: \d+ bytes, but the shard index \S+ was made for \d+"):
        shard_input(index_path, 0, 3)


# ------------------------------------------------------------------------------------------------
# Per-shard post-processing and the merge against assemble, on the smoke data


SHARD_SIZE = 700  # the smoke slice's 2,000 cleaned pairs: 3 shards


def _data_args(workdir: Path) -> dict[str, Path]:
    data = data_dir(workdir)
    return {"ids": data / "clean/train.ids", "src-spm": data / "spm/train.de", "ref-spm": data / "spm/train.en",
            "src-text": data / "clean/train.de", "ref-text": data / "clean/train.en"}


def _flags(mapping: dict[str, object]) -> list[object]:
    return [x for key, value in mapping.items() for x in (f"--{key}", value)]


@pytest.fixture(scope="module")
def standin_shards(smoke_data, tmp_path_factory):
    """The shard index of the smoke data and n-best shards from the benchmark's stand-in teacher."""
    root = tmp_path_factory.mktemp("scale_distill")
    index = root / "index.json"
    cli("pipeline.distill.shard_index", "--shard-size", SHARD_SIZE, *_flags(_data_args(smoke_data)), "--out", index)
    shards = json.loads(index.read_text())["shards"]
    assert shards == 3
    paths = [root / "shards" / shard_filename(k, shards) for k in range(shards)]
    for k, path in enumerate(paths):
        cli("pipeline.benchmarks.nbest_standin", "--index", index, "--shard-id", k, "--num-shards", shards,
            "--out", path, "--nbest", 3)
    return smoke_data, index, paths


def _outputs(out: Path) -> dict[str, object]:
    return {"out-src": out / "train.de", "out-tgt": out / "train.en", "out-ids": out / "train.ids",
            "text-src": out / "train.de.txt", "text-tgt": out / "train.en.txt", "stats": out / "stats.json"}


def _postprocess(workdir: Path, index: Path, shard: Path, k: int, out_dir: Path, options: list[str], check=True):
    return cli("pipeline.distill.postprocess", "--shard", shard, "--shard-id", k, "--num-shards", 3, "--index", index,
               "--spm-model", data_dir(workdir) / "spm/spm.model", "--out-dir", out_dir, *options, check=check)


def _per_shard_path(workdir: Path, index: Path, shards: list[Path], root: Path, options: list[str]) -> Path:
    parts = [root / "post" / s.name.removesuffix(".jsonl") for s in shards]
    for k, (shard, part) in enumerate(zip(shards, parts, strict=True)):
        _postprocess(workdir, index, shard, k, part, options)
    cli("pipeline.distill.merge", "--index", index, "--num-shards", 3, "--parts", *parts,
        *_flags(_outputs(root / "merged")))
    return root / "merged"


def _assemble(workdir: Path, shards: list[Path], out: Path, options: list[str], check=True):
    data = _data_args(workdir)
    return cli("pipeline.distill.assemble", "--shards", *shards, "--num-shards", len(shards), "--ids", data["ids"],
               "--src-spm", data["src-spm"], "--ref-spm", data["ref-spm"], "--src-text", data["src-text"],
               "--ref-text", data["ref-text"], "--spm-model", data_dir(workdir) / "spm/spm.model",
               *_flags(_outputs(out)), *options, check=check)


@pytest.mark.parametrize("options", [
    ["--selection", "seq_inter"],
    ["--selection", "top1", "--on-filtered", "drop", "--max-repeat", "3"],
])
def test_per_shard_path_is_byte_identical_to_assemble(standin_shards, tmp_path, options):
    workdir, index, shards = standin_shards
    random.Random(0).shuffle(lines := shards[1].read_text().splitlines())  # records in any order inside a shard
    shuffled = [shards[0], tmp_path / shards[1].name, shards[2]]
    shuffled[1].write_text("\n".join(lines) + "\n")
    merged = _per_shard_path(workdir, index, shuffled, tmp_path, options)
    _assemble(workdir, shards, tmp_path / "assembled", options)
    for name in OUTPUTS:
        assert (merged / name).read_bytes() == (tmp_path / "assembled" / name).read_bytes(), name
    stats = json.loads((merged / "stats.json").read_text())
    assert stats["filtered"]["total"] > 0 and stats["distilled_vs_reference"]["bleu"] is not None
    assert stats["fallback_share"] == round(stats["filtered"]["total"] / stats["pairs_in"], 4)
    if "drop" in options:
        assert stats["pairs_out"] < stats["pairs_in"] and stats["dropped"] == stats["filtered"]["total"]


def _part_dirs(workdir: Path, index: Path, shards: list[Path], root: Path) -> list[Path]:
    parts = [root / "post" / s.name.removesuffix(".jsonl") for s in shards]
    for k, (shard, part) in enumerate(zip(shards, parts, strict=True)):
        _postprocess(workdir, index, shard, k, part, [])
    return parts


def _merge(index: Path, parts: list[Path], out: Path, *extra: object) -> subprocess.CompletedProcess:
    return cli("pipeline.distill.merge", "--index", index, "--num-shards", 3, "--parts", *parts,
               *_flags(_outputs(out)), *extra, check=False)


def test_postprocess_checks_the_shard_as_reassembly_does(standin_shards, tmp_path):
    workdir, index, shards = standin_shards
    lines = shards[1].read_text().splitlines()
    ids_of = [json.loads(line)["id"] for line in lines]
    other = json.loads(shards[2].read_text().splitlines()[0])
    cases = {
        "missing": (lines[:-1], rf"shard001-of-003\.jsonl: 1 of its {len(lines)} ids missing \(first: id {ids_of[-1]}\)"),
        "duplicated": (lines + lines[:1], rf"shard shard001-of-003\.jsonl: duplicated id {ids_of[0]}"),
        "foreign": (lines + [json.dumps({**other})], rf"shard001-of-003\.jsonl: foreign id {other['id']}: it belongs to shard 002"),
        "not training": (lines + [json.dumps({**other, "id": 10**9})], r"foreign id 1000000000: not in the training ids"),
    }
    for case, (content, message) in cases.items():
        bad = tmp_path / case / shards[1].name
        bad.parent.mkdir()
        bad.write_text("\n".join(content) + "\n")
        proc = _postprocess(workdir, index, bad, 1, tmp_path / case / "out", [], check=False)
        assert proc.returncode == 2, case
        assert re.search(message, proc.stderr), (case, proc.stderr)
        assert not (tmp_path / case / "out").exists()


def test_merge_checks_every_part(standin_shards, tmp_path):
    workdir, index, shards = standin_shards
    parts = _part_dirs(workdir, index, shards, tmp_path)
    out = tmp_path / "merged"
    proc = _merge(index, [parts[0], parts[0], parts[2]], out)
    assert proc.returncode == 2 and "shard shard000-of-003.jsonl: given twice" in proc.stderr
    ids_file = parts[1] / "ids"
    good = ids_file.read_text()
    ids = good.splitlines()
    foreign = read_lines(parts[2] / "ids")[0]
    for content, message in (
        (ids[:-1], f"shard shard001-of-003.jsonl: 1 of its {len(ids)} ids missing (first: id {ids[-1]})"),
        (ids[:1] + ids, f"shard shard001-of-003.jsonl: duplicated id {ids[0]} (also in shard shard001-of-003.jsonl)"),
        ([*ids, foreign], f"shard shard001-of-003.jsonl: foreign id {foreign}: it belongs to shard 002"),
        ([*ids[:-1], "999999999"], "shard shard001-of-003.jsonl: foreign id 999999999: not in the training ids"),
    ):
        ids_file.write_text("\n".join(content) + "\n")
        proc = _merge(index, parts, out)
        assert proc.returncode == 2 and message in proc.stderr, (message, proc.stderr)
    ids_file.write_text(good)
    (parts[2] / "stats.json").unlink()
    proc = _merge(index, parts, out)
    assert proc.returncode == 2 and "shard002-of-003: not a post-processed shard" in proc.stderr
    assert not out.exists()


def test_fallback_share_warns_and_fails_naming_the_filters(standin_shards, tmp_path):
    workdir, index, shards = standin_shards
    strict = ["--selection", "top1", "--min-length-ratio", "1.0"]  # a target shorter than its source: filtered
    parts = [tmp_path / "post" / s.name.removesuffix(".jsonl") for s in shards]
    for k, (shard, part) in enumerate(zip(shards, parts, strict=True)):
        _postprocess(workdir, index, shard, k, part, strict)
    stats = [json.loads((p / "stats.json").read_text())["stats"] for p in parts]
    total = sum(sum(s["filtered"].values()) for s in stats)
    n = sum(s["pairs_in"] for s in stats)
    share = total / n
    assert 0.2 < share < 0.9, share
    proc = _merge(index, parts, tmp_path / "warned")
    assert proc.returncode == 0, proc.stderr
    assert f"of the distilled pairs ({total} of {n}) fell back to the reference" in proc.stderr
    assert "above distill.max_fallback_share 0.2" in proc.stderr and "length_ratio " in proc.stderr
    merged = json.loads((tmp_path / "warned/stats.json").read_text())
    assert merged["fallback_share"] == round(share, 4) and merged["fallback_check"]["status"] == "warning"
    proc = _merge(index, parts, tmp_path / "failed", "--fail-fallback-share", round(share - 0.01, 3))
    assert proc.returncode == 2 and "above distill.fail_fallback_share" in proc.stderr and "length_ratio " in proc.stderr
    assert not (tmp_path / "failed").exists()
    proc = _assemble(workdir, shards, tmp_path / "assembled", [*strict, "--fail-fallback-share", "0.1"], check=False)
    assert proc.returncode == 2 and "above distill.fail_fallback_share 0.1" in proc.stderr
    assert not (tmp_path / "assembled").exists()


# ------------------------------------------------------------------------------------------------
# Kills


def test_killed_postprocess_and_merge_rerun_to_the_same_complete_result(standin_shards, tmp_path):
    workdir, index, shards = standin_shards
    options = ["--selection", "seq_inter"]
    reference = _per_shard_path(workdir, index, shards, tmp_path / "reference", options)

    # SIGKILL a shard job while it writes its part (its temporary directory exists)
    part = tmp_path / "run/post" / shards[0].name.removesuffix(".jsonl")
    part.parent.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pipeline.distill.postprocess", "--shard", str(shards[0]), "--shard-id", "0",
           "--num-shards", "3", "--index", str(index), "--spm-model", str(data_dir(workdir) / "spm/spm.model"),
           "--out-dir", str(part), *options]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(part.parent.glob(f".{part.name}.*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the shard job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not part.exists() and any(part.parent.glob(f".{part.name}.*"))  # no part: only a temporary

    # SIGKILL the merge after it has streamed the first shard into its outputs
    _per_shard_path(workdir, index, shards, tmp_path / "run", options)  # reruns every shard job (the killed one first)
    assert not any((tmp_path / "run/post").glob(".*"))  # the rerun removed the killed job's temporary
    merged = tmp_path / "run/merged"
    for path in merged.iterdir():
        path.unlink()
    parts = [tmp_path / "run/post" / s.name.removesuffix(".jsonl") for s in shards]
    killer = (
        "import os, signal, sys, runpy\n"
        "import pipeline.distill.merge as m\n"
        "opened = []\n"
        "real = m.Path.open\n"
        "def open_(self, *a, **k):\n"
        "    if self.name == 'src.spm' and 'shard001' in str(self.parent):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, *a, **k)\n"
        "m.Path.open = open_\n"
        "sys.argv = ['merge', *sys.argv[1:]]\n"
        "runpy.run_module('pipeline.distill.merge', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer, "--index", str(index), "--num-shards", "3", "--parts",
                           *map(str, parts), *map(str, _flags(_outputs(merged)))], env=ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not any((merged / name).exists() for name in OUTPUTS)
    assert any(p.name.startswith(".") for p in merged.iterdir())  # the killed merge's temporaries
    assert _merge(index, parts, merged).returncode == 0
    assert sorted(p.name for p in merged.iterdir()) == sorted(OUTPUTS)  # complete, no temporaries left
    for name in OUTPUTS:
        assert (merged / name).read_bytes() == (reference / name).read_bytes(), name


def test_gzip_mirror_is_not_indexable(tmp_path):
    files = _files(tmp_path, 3)
    gz = tmp_path / "src.gz"
    gz.write_bytes(gzip.compress(files["src_spm"].read_bytes()))
    with pytest.raises(DataError, match=r"src\.gz: a shard index needs a plain \(seekable\) file"):
        build_index({**files, "src_spm": gz}, 2)


@pytest.mark.parametrize("metric", ["chrf", "bleu"])
def test_seq_inter_with_the_reference_extracted_once_scores_as_sacrebleu(metric):
    from pipeline.distill.selection import reference_scorer, sentence_metric

    rng = random.Random(1)
    refs = ["A man in a blue shirt is standing on a ladder.", "Zwei Hunde spielen im Schnee.", "x", "",
            "Two young, White males are outside near many bushes."]
    slow, fast = sentence_metric(metric), reference_scorer(metric)
    for ref in refs:
        words = ref.split()
        hyps = [ref, "", ref + " .", *(" ".join(rng.sample(words, len(words))[: rng.randint(0, len(words))])
                                       for _ in range(20))]
        score = fast(ref)
        assert [score(h) for h in hyps] == [slow(h, ref) for h in hyps]
