"""Sequence-level distillation: shard layout and reassembly by id, target selection, filters, and
the whole stage through the real Snakefile on the smoke slice with a tiny teacher (3 shards)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, data_dir, deep_merge, distill_dir, model_dir, snakemake, write_config

from pipeline.corpus import read_lines
from pipeline.distill.assemble import distill
from pipeline.distill.filters import FilterConfig, hypothesis_rejection, longest_repeat
from pipeline.distill.selection import seq_inter, top1
from pipeline.distill.shards import (
    Hyp,
    NBest,
    read_ids,
    reassemble,
    record_to_json,
    shard_filename,
    shard_of_position,
    shard_range,
    write_shard,
)
from pipeline.errors import DataError

# ------------------------------------------------------------------------------------------------
# Shards and reassembly

IDS = [5, 2, 9, 11, 0, 7, 3, 14]  # training ids: original line numbers, not positions


def _record(rid: int, n: int = 2) -> NBest:
    return NBest(rid, tuple(Hyp(f"▁hyp{rid}_{k}", -0.1 * (k + 1)) for k in range(n)))


def _write_shards(tmp_path: Path, ids=IDS, shards: int = 3) -> list[Path]:
    paths = []
    for k in range(shards):
        start, end = shard_range(len(ids), shards, k)
        path = tmp_path / shard_filename(k, shards)
        write_shard(path, [_record(i) for i in ids[start:end]], ids[start:end], nbest=2)
        paths.append(path)
    return paths


def test_shard_ranges_partition_the_corpus():
    for n in (0, 1, 2, 7, 8, 100, 2001):
        for shards in (1, 2, 3, 8, 13):
            ranges = [shard_range(n, shards, k) for k in range(shards)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
            for pos in range(n):
                s, e = ranges[shard_of_position(pos, n, shards)]
                assert s <= pos < e


def test_shard_names_are_zero_padded_and_carry_the_count():
    assert shard_filename(1, 3) == "shard001-of-003.jsonl"
    assert shard_filename(12, 1500) == "shard0012-of-1500.jsonl"
    assert sorted(shard_filename(k, 12) for k in range(12)) == [shard_filename(k, 12) for k in range(12)]


def test_reassembly_from_shuffled_shards_follows_the_training_order(tmp_path):
    paths = _write_shards(tmp_path)
    random.Random(0).shuffle(paths)
    merged = reassemble(paths, IDS, 3)
    assert [r.id for r in merged] == IDS
    assert [r.hyps[0].text for r in merged] == [f"▁hyp{i}_0" for i in IDS]


def test_reassembly_ignores_the_record_order_inside_a_shard(tmp_path):
    paths = _write_shards(tmp_path)
    lines = paths[0].read_text().splitlines()
    paths[0].write_text("\n".join(reversed(lines)) + "\n")
    assert [r.id for r in reassemble(paths, IDS, 3)] == IDS


def test_reassembly_missing_shard_names_the_shard_and_id(tmp_path):
    paths = _write_shards(tmp_path)
    with pytest.raises(DataError, match=r"shard001-of-003\.jsonl: 3 of its 3 ids missing \(first: id 9\)"):
        reassemble([paths[0], paths[2]], IDS, 3)


def test_reassembly_missing_line_names_the_shard_and_id(tmp_path):
    paths = _write_shards(tmp_path)
    lines = paths[2].read_text().splitlines()
    paths[2].write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"shard002-of-003\.jsonl: 1 of its 3 ids missing \(first: id 14\)"):
        reassemble(paths, IDS, 3)


def test_reassembly_duplicated_id_names_the_shard_and_id(tmp_path):
    paths = _write_shards(tmp_path)
    with paths[1].open("a") as f:
        f.write(record_to_json(_record(11)) + "\n")
    with pytest.raises(DataError, match=r"shard shard001-of-003\.jsonl: duplicated id 11"):
        reassemble(paths, IDS, 3)


def test_reassembly_foreign_ids_fail(tmp_path):
    paths = _write_shards(tmp_path)
    with paths[0].open("a") as f:
        f.write(record_to_json(_record(99)) + "\n")
    with pytest.raises(DataError, match=r"shard000-of-003\.jsonl: foreign id 99: not in the training ids"):
        reassemble(paths, IDS, 3)
    paths = _write_shards(tmp_path)
    with paths[0].open("a") as f:  # a training id, but shard 002's
        f.write(record_to_json(_record(14)) + "\n")
    with pytest.raises(DataError, match=r"shard000-of-003\.jsonl: foreign id 14: it belongs to shard 002"):
        reassemble(paths, IDS, 3)


def test_reassembly_rejects_shards_of_another_count(tmp_path):
    paths = _write_shards(tmp_path, shards=2)
    with pytest.raises(DataError, match=r"shard000-of-002\.jsonl: made for 2 shards, this run has 3"):
        reassemble(paths, IDS, 3)


def test_corrupt_shard_line_is_reported_with_file_and_line(tmp_path):
    paths = _write_shards(tmp_path)
    with paths[1].open("a") as f:
        f.write('{"id": 3, "hyps": [{"text": "x"\n')
    with pytest.raises(DataError, match=r"shard001-of-003\.jsonl: line 4: not a shard record"):
        reassemble(paths, IDS, 3)


def test_write_shard_is_atomic_and_verifies_its_count(tmp_path):
    out = tmp_path / shard_filename(0, 1)

    def killed():
        yield _record(5)
        raise KeyboardInterrupt  # as if the job were stopped mid-shard

    with pytest.raises(KeyboardInterrupt):
        write_shard(out, killed(), [5, 2])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=r"1 records, expected 2"):
        write_shard(out, [_record(5)], [5, 2])
    with pytest.raises(DataError, match=r"record 1: id 3, expected id 2"):
        write_shard(out, [_record(5), _record(3)], [5, 2])
    with pytest.raises(DataError, match=r"id 5: 1 hypotheses, expected 2"):
        write_shard(out, [_record(5, n=1), _record(2)], [5, 2], nbest=2)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / f".{out.name}.stale").write_text("left by a killed run")
    write_shard(out, [_record(5), _record(2)], [5, 2], nbest=2)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_decode_shard_checks_its_inputs_before_loading_the_teacher(tmp_path):
    """decode_shard reads its range through the shard index; the index checks the corpus when it is made."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    corpus = {"train.de": "▁a\n▁b\n▁c\n", "train.en": "▁x\n▁y\n▁z\n", "text.de": "a\nb\nc\n", "text.en": "x\ny\nz\n"}
    for name, text in corpus.items():
        (tmp_path / name).write_text(text)
    index = tmp_path / "index.json"
    make_index = [sys.executable, "-m", "pipeline.distill.shard_index", "--shard-size", "1",
                  "--ids", str(tmp_path / "train.ids"), "--src-spm", str(tmp_path / "train.de"),
                  "--ref-spm", str(tmp_path / "train.en"), "--src-text", str(tmp_path / "text.de"),
                  "--ref-text", str(tmp_path / "text.en"), "--out", str(index)]
    (tmp_path / "train.ids").write_text("0\n1\n")
    proc = subprocess.run(make_index, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "train.de: 3 lines, but" in proc.stderr and "has 2 ids" in proc.stderr
    assert not index.exists()
    (tmp_path / "train.ids").write_text("0\n1\n2\n")
    subprocess.run(make_index, check=True, capture_output=True, env=env)

    cmd = [sys.executable, "-m", "pipeline.distill.decode_shard", "--model", str(tmp_path / "none.pt"),
           "--data", str(tmp_path), "--index", str(index), "--out", str(tmp_path / "out.jsonl")]
    proc = subprocess.run([*cmd, "--num-shards", "3", "--shard", "3"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--shard 3 outside 0..2" in proc.stderr
    proc = subprocess.run([*cmd, "--num-shards", "2", "--shard", "0"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "the corpus has 3 shards" in proc.stderr and "this run has 2" in proc.stderr
    (tmp_path / "train.de").write_text("▁a\n▁b\n")  # changed since the index was made
    proc = subprocess.run([*cmd, "--num-shards", "3", "--shard", "0"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "train.de: 10 bytes, but the shard index" in proc.stderr, proc.stderr
    assert "was made for 15: the file changed since, rebuild the index" in proc.stderr
    (tmp_path / "train.de").write_text("▁a\n    \n▁c\n")  # the indexed size, but an empty source line
    proc = subprocess.run([*cmd, "--num-shards", "3", "--shard", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "train.de: line 2 (id 1): empty source in shard" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_read_ids_rejects_repeats(tmp_path):
    path = tmp_path / "train.ids"
    path.write_text("3\n1\n3\n")
    with pytest.raises(DataError, match=r"line 3: id 3 repeated"):
        read_ids(path)


# ------------------------------------------------------------------------------------------------
# Target selection


def _detok(pieces: str) -> str:
    return "".join(pieces.split()).replace("▁", " ").strip()


NBEST = NBest(
    7,
    (
        Hyp("▁a ▁dog ▁runs ▁on ▁grass", -0.40),
        Hyp("▁a ▁man ▁rides ▁a ▁horse", -0.20),  # the best score, not listed first
        Hyp("▁a ▁man ▁is ▁riding ▁a ▁brown ▁horse", -0.90),  # the closest to the reference
    ),
)
REFERENCE = "a man is riding a brown horse ."


def test_top1_picks_the_highest_score():
    assert top1(NBEST) == 1
    tie = NBest(1, (Hyp("▁x", -0.5), Hyp("▁y", -0.5)))
    assert top1(tie) == 0


@pytest.mark.parametrize("metric", ["chrf", "bleu"])
def test_seq_inter_picks_the_hypothesis_closest_to_the_reference(metric):
    from pipeline.distill.selection import sentence_metric

    assert seq_inter(NBEST, REFERENCE, sentence_metric(metric), _detok) == 2
    # equal similarity: the higher teacher score wins
    same = NBest(1, (Hyp("▁b", -0.9), Hyp("▁b", -0.1)))
    assert seq_inter(same, "a", sentence_metric(metric), _detok) == 1


# ------------------------------------------------------------------------------------------------
# Filters


def test_longest_repeat():
    assert longest_repeat([], 4) == 0
    assert longest_repeat("a b c".split(), 4) == 1
    assert longest_repeat("a a a b".split(), 4) == 3
    assert longest_repeat("x a b a b a b a b y".split(), 4) == 4
    assert longest_repeat("x a b a b a b a b y".split(), 1) == 1  # bigram loops need n >= 2


def test_each_filter_on_hand_made_pairs():
    cfg = FilterConfig(min_length_ratio=0.5, max_length_ratio=2.0, max_repeat=3, max_repeat_ngram=2)
    src = "▁ein ▁mann ▁auf ▁einem ▁pferd"  # 5 pieces
    assert hypothesis_rejection(src, "", cfg) == "empty"
    assert hypothesis_rejection(src, "   ", cfg) == "empty"
    assert hypothesis_rejection(src, "▁a ▁man", cfg) == "length_ratio"  # 0.4
    assert hypothesis_rejection(src, " ".join(["▁a"] * 3 + ["▁b"] * 8), cfg) == "length_ratio"  # 2.2 (first filter wins)
    assert hypothesis_rejection(src, "▁a ▁man ▁a ▁man ▁a ▁man ▁a ▁man", cfg) == "repeat"  # bigram 4 times
    assert hypothesis_rejection(src, "▁a ▁man ▁a ▁man ▁a ▁man ▁on", cfg) is None  # 3 times: allowed
    assert hypothesis_rejection(src, "▁a ▁man ▁on ▁a ▁horse", cfg) is None


SRC_SPM = ["▁ein ▁mann", "▁zwei ▁hunde ▁laufen", "▁eine ▁frau", "▁ein ▁kind ▁spielt", "▁ein ▁ball"]
REF_SPM = ["▁a ▁man", "▁two ▁dogs ▁run", "▁a ▁woman", "▁a ▁child ▁plays", "▁a ▁ball"]
HYPS = [
    "▁a ▁man",  # kept, identical to the reference
    "",  # empty
    "▁a ▁lady",  # kept, differs
    "▁a ▁child ▁a ▁child ▁a ▁child ▁a ▁child ▁a ▁child ▁a",  # too long (ratio 11/3)
    "▁the ▁ball ▁ball ▁ball ▁ball ▁ball",  # repeat (ratio 6/2 = 3: not too long)
]
IDS_FIVE = [10, 11, 12, 13, 14]


def _records():
    return [NBest(i, (Hyp(h, -0.5),)) for i, h in zip(IDS_FIVE, HYPS, strict=True)]


@pytest.mark.parametrize("on_filtered", ["reference", "drop"])
def test_filters_are_counted_and_never_silent(on_filtered):
    refs = [_detok(r) for r in REF_SPM]
    result = distill(_records(), IDS_FIVE, SRC_SPM, REF_SPM, [_detok(s) for s in SRC_SPM], refs, _detok,
                     filters=FilterConfig(on_filtered=on_filtered))
    stats = result.stats
    assert stats["filtered"] == {"empty": 1, "length_ratio": 1, "repeat": 1, "total": 3}
    assert stats["pairs_in"] == 5
    if on_filtered == "reference":
        assert result.ids == IDS_FIVE
        assert result.tgt_spm == [HYPS[0], REF_SPM[1], HYPS[2], REF_SPM[3], REF_SPM[4]]
        assert result.tgt_text[1] == refs[1]
        assert stats["pairs_out"] == 5 and stats["fallback_to_reference"] == 3 and stats["dropped"] == 0
        assert stats["targets_differ_from_reference"] == 1
    else:
        assert result.ids == [10, 12]
        assert result.src_spm == [SRC_SPM[0], SRC_SPM[2]]
        assert result.tgt_spm == [HYPS[0], HYPS[2]]
        assert stats["pairs_out"] == 2 and stats["dropped"] == 3 and stats["fallback_to_reference"] == 0
        assert stats["targets_differ_from_reference"] == 1
    assert stats["pairs_out"] + stats["dropped"] == stats["pairs_in"]


def test_distill_refuses_records_out_of_order():
    records = _records()
    records[0], records[1] = records[1], records[0]
    with pytest.raises(DataError, match=r"record 0: id 11, expected id 10"):
        distill(records, IDS_FIVE, SRC_SPM, REF_SPM, SRC_SPM, REF_SPM, _detok)


# ------------------------------------------------------------------------------------------------
# The stage through the real Snakefile

DISTILL_RULES = ["distill_shard_index", "distill_decode_shard", "distill_postprocess", "distill_merge", "distill_binarize",
                 "distill", "stage_settings"]  # (stage_settings: the distillation's settings.json)
SHARDS = [f"shard{k:03d}-of-003.jsonl" for k in range(3)]
# Paths in the distillation's keyed directory (conftest.distill_dir):
POSTPROCESSED = "post"  # one directory per shard (distill_postprocess)
MERGED = ["train.de", "train.en", "train.ids", "train.de.txt", "train.en.txt", "stats.json"]  # distill_merge's outputs
# What a kill during decoding leaves missing besides unfinished shards and their post-processing: the merge
# and everything after it.
DOWNSTREAM = [*MERGED, "bin"]
# The tiny teacher loops on every sentence: short hypotheses keep decoding fast, and permissive
# filters let its outputs through, so that the corpus really is the teacher's (not the fallback).
TEST_CONFIG = {
    "resources": {"distill": {"threads": 1}},  # two shards at a time on the 2 cores
    "distill": {
        "selection": "seq_inter",
        "max_len_a": 1.0,
        "max_len_b": 2,
        "filters": {"min_length_ratio": 0.0, "max_length_ratio": 100.0, "max_repeat": 1000},
    }
}


def _distill_cmd(workdir: Path, *args: str, config: Path, cores: int = 2) -> list[str]:
    # Only the distillation rules may run: the teacher checkpoint is given, never (re)trained here.
    return [*SNAKEMAKE, *args, "distill", "--allowed-rules", *DISTILL_RULES, "-s", str(REPO / "Snakefile"),
            "--directory", str(workdir), "--cores", str(cores), "--configfile", str(config)]


def _snakemake_distill(workdir: Path, *args: str, config: Path) -> str:
    return snakemake(workdir, *args, "distill", "--allowed-rules", *DISTILL_RULES, config=config).stdout


def _job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs (without the total)."""
    counts: dict[str, int] = {}
    table = dry_run_output.split("Job stats:", 1)[1] if "Job stats:" in dry_run_output else ""
    for line in table.splitlines():
        match = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
        elif match:
            break
    return counts


def _planned_shards(dry_run_output: str) -> list[str]:
    return sorted(set(re.findall(r"output: \S*/(shard\d+-of-\d+\.jsonl)", dry_run_output)))


def _mtimes(shard_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("*.jsonl")}


def _remove(base: Path, paths: list[str]) -> None:
    for rel in paths:
        path = base / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def distilled(smoke_data, tiny_teacher, tmp_path_factory):
    """A copy of the smoke workdir with the tiny teacher in place and `snakemake distill` run."""
    workdir = tmp_path_factory.mktemp("distill") / "run"
    shutil.copytree(smoke_data, workdir, symlinks=True)
    config = write_config(workdir, TEST_CONFIG)
    teacher = model_dir(workdir, "teacher", config) / "model.pt"
    teacher.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_teacher, teacher)
    now = time.time() + 1  # newer than every data output, whatever rule claims the teacher
    os.utime(teacher, (now, now))
    _snakemake_distill(workdir, config=config)
    return workdir, config


@pytest.mark.slow
def test_distilled_corpus_has_every_pair_in_order_and_is_binarised(distilled):
    workdir, config = distilled
    data, dist = data_dir(workdir, config), distill_dir(workdir, config)
    ids = read_lines(data / "clean/train.ids")
    n = len(ids)
    assert n > 1000
    assert read_lines(dist / "train.ids") == ids
    for path in ["train.de", "train.en", "train.de.txt", "train.en.txt"]:
        assert len(read_lines(dist / path)) == n, path
    assert read_lines(dist / "train.de") == read_lines(data / "spm/train.de")
    assert read_lines(dist / "train.de.txt") == read_lines(data / "clean/train.de")

    shard_dir = dist / "shards"
    assert sorted(p.name for p in shard_dir.iterdir()) == SHARDS  # no temporaries left behind
    records = []
    for name in SHARDS:
        records += [json.loads(line) for line in read_lines(shard_dir / name)]
    assert [str(r["id"]) for r in records] == ids
    assert all(len(r["hyps"]) == 2 for r in records)  # smoke config: nbest 2

    stats = json.loads((dist / "stats.json").read_text())
    assert stats["pairs_in"] == stats["pairs_out"] == n
    assert stats["selection"] == "seq_inter" and stats["shards"] == 3
    assert stats["fallback_to_reference"] == stats["filtered"]["total"] == stats["filtered"]["empty"]
    assert sum(stats["selected_rank"].values()) == n
    assert stats["targets_differ_from_reference"] > n // 2
    assert stats["distilled_vs_reference"]["bleu"] is not None and stats["selected_vs_reference"]["chrf"] is not None
    # every target is one of the teacher's hypotheses for that very id, or (filtered) its reference
    refs = read_lines(data / "spm/train.en")
    targets = read_lines(dist / "train.en")
    for record, target, ref in zip(records, targets, refs, strict=True):
        assert target in {h["text"] for h in record["hyps"]} | {ref}, record["id"]

    from pipeline.distill.binarize import dataset_size

    bin_dir = dist / "bin"
    for lang in ("de", "en"):
        assert dataset_size(bin_dir / f"train.de-en.{lang}") == n
        assert (bin_dir / f"dict.{lang}.txt").read_bytes() == (data / f"bin/dict.{lang}.txt").read_bytes()
        for split in ("valid", "test"):
            for ext in ("bin", "idx"):
                name = f"{split}.de-en.{lang}.{ext}"
                assert (bin_dir / name).read_bytes() == (data / "bin" / name).read_bytes()
    assert (workdir / f"logs/distill/{dist.name}/decode_shard001-of-003.log").exists()
    assert (workdir / f"benchmarks/distill/{dist.name}/decode_shard001-of-003.tsv").exists()
    assert json.loads((data / "distill_index-700.json").read_text())["shards"] == 3  # distill.shard_size 700
    assert sorted(p.name for p in (dist / POSTPROCESSED).iterdir()) == [name.removesuffix(".jsonl") for name in SHARDS]
    settings = json.loads((dist / "settings.json").read_text())  # what the directory's key hashes
    assert dist.name == f"seq_inter_beam2-{settings['key']}" and settings["settings"]["distill"]["max_len_b"] == 2


@pytest.mark.slow
def test_add_references_binarises_the_mix_without_redecoding(distilled):
    """distill.add_references: the same distillation directory, a second binarised set (bin+ref/): the
    distilled pairs in order, then the original training pairs, each exactly as binarised alone."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    from pipeline.distill.binarize import dataset_size

    workdir, config = distilled
    dist, data = distill_dir(workdir, config), data_dir(workdir, config)
    mix_config = workdir / "mix_config.yaml"
    mix_config.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(config.read_text()),
                                                    {"distill": {"add_references": True}})))
    assert distill_dir(workdir, mix_config) == dist
    plain_bin = {p.name: p.stat().st_mtime_ns for p in (dist / "bin").iterdir()}
    dry = _snakemake_distill(workdir, "-n", config=mix_config)
    assert _job_counts(dry) == {"distill_binarize": 1, "distill": 1}, dry[-3000:]
    _snakemake_distill(workdir, config=mix_config)
    assert {p.name: p.stat().st_mtime_ns for p in (dist / "bin").iterdir()} == plain_bin  # untouched
    assert (workdir / f"logs/distill/{dist.name}/binarize+ref.log").exists()
    for lang in ("de", "en"):
        mixed, distilled_set, original = (MMapIndexedDataset(str(d / f"train.de-en.{lang}"))
                                          for d in (dist / "bin+ref", dist / "bin", data / "bin"))
        n, m = len(distilled_set), len(original)
        assert len(mixed) == n + m and dataset_size(dist / f"bin+ref/train.de-en.{lang}") == n + m
        assert all(mixed[i].tolist() == distilled_set[i].tolist() for i in range(n))
        assert all(mixed[n + j].tolist() == original[j].tolist() for j in range(m))
        for split in ("valid", "test"):
            name = f"{split}.de-en.{lang}.bin"
            assert (dist / "bin+ref" / name).read_bytes() == (data / "bin" / name).read_bytes()
    assert not list(dist.glob("*.tmp"))


def test_concatenation_refuses_a_file_whose_last_line_has_no_newline(tmp_path):
    from pipeline.distill.binarize import concatenate

    for name, text in (("a.de", "x\n"), ("a.en", "y\n"), ("b.de", "u\n"), ("b.en", "v")):
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=f"^{tmp_path / 'b.en'}: the last line has no newline$"):
        concatenate([tmp_path / "a", tmp_path / "b"], "de", "en", tmp_path / "out")
    concatenate([tmp_path / "a", tmp_path / "a"], "de", "en", tmp_path / "out")
    assert (tmp_path / "out.de").read_text() == "x\nx\n" and (tmp_path / "out.en").read_text() == "y\ny\n"


@pytest.mark.slow
def test_deleted_shard_dry_run_lists_only_it_and_its_downstream_jobs(distilled):
    """A shard without output, as after a kill during decoding (nothing downstream exists yet: with the
    distilled corpus present and newer, Snakemake would not remake a deleted intermediate shard)."""
    workdir, config = distilled
    dist = distill_dir(workdir, config)
    shard_dir = dist / "shards"
    assert _job_counts(_snakemake_distill(workdir, "-n", config=config)) == {}

    (shard_dir / SHARDS[1]).unlink()
    _remove(dist, [f"{POSTPROCESSED}/{SHARDS[1].removesuffix('.jsonl')}", *DOWNSTREAM])
    kept = _mtimes(shard_dir)
    dry = _snakemake_distill(workdir, "-n", config=config)
    assert _job_counts(dry) == {"distill_decode_shard": 1, "distill_postprocess": 1, "distill_merge": 1,
                                "distill_binarize": 1, "distill": 1}, dry[-3000:]
    assert _planned_shards(dry) == [SHARDS[1]]
    assert _mtimes(shard_dir) == kept  # (the rerun itself: test_killed_run_resumes_...)


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_shards(distilled):
    """SIGKILL to the whole run (a cluster time limit) while a later shard decodes."""
    workdir, config = distilled
    dist = distill_dir(workdir, config)
    shard_dir = dist / "shards"
    _remove(dist, ["shards", POSTPROCESSED, *DOWNSTREAM])
    log = workdir / "killed_run.log"
    with log.open("w") as out:  # one core: shards one after the other
        proc = subprocess.Popen(_distill_cmd(workdir, config=config, cores=1), cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while not re.search(r"Finished jobid: \d+ \(Rule: distill_decode_shard\)", log.read_text()):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no shard finished in time"
            time.sleep(0.5)
        time.sleep(1)  # the next shard is decoding now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = _mtimes(shard_dir)
    assert 1 <= len(finished) < 3 and not (dist / "train.en").exists()

    snakemake(workdir, "--unlock", config=config)  # a killed run leaves its lock behind
    dry = _snakemake_distill(workdir, "-n", config=config)
    missing = sorted(set(SHARDS) - set(finished))
    assert _planned_shards(dry) == missing, dry[-3000:]
    post_dir = dist / POSTPROCESSED
    posted = sorted(p.name for p in post_dir.iterdir() if not p.name.startswith(".")) if post_dir.is_dir() else []
    assert set(posted) <= {name.removesuffix(".jsonl") for name in finished}
    assert _job_counts(dry) == {"distill_decode_shard": len(missing), "distill_postprocess": 3 - len(posted),
                                "distill_merge": 1, "distill_binarize": 1, "distill": 1}, dry[-3000:]

    _snakemake_distill(workdir, config=config)
    after = _mtimes(shard_dir)
    assert sorted(after) == SHARDS
    assert {name: after[name] for name in finished} == finished
    assert read_lines(dist / "train.ids") == read_lines(data_dir(workdir, config) / "clean/train.ids")


@pytest.mark.slow
def test_kill_during_postprocessing_or_merge_then_rerun_gives_the_same_result(distilled):
    """SIGKILL to the whole run as soon as a shard's post-processing, then the merge, has started: the rerun
    completes, redoes no decoding, and writes the same bytes as the uninterrupted run."""
    workdir, config = distilled
    dist = distill_dir(workdir, config)
    expected = {rel: (dist / rel).read_bytes() for rel in MERGED}
    shards = _mtimes(dist / "shards")
    for rule, job_log, removed in (
        ("distill_postprocess", f"logs/distill/{dist.name}/postprocess001-of-003.log", [POSTPROCESSED, *DOWNSTREAM]),
        ("distill_merge", f"logs/distill/{dist.name}/merge.log", DOWNSTREAM),
    ):
        _remove(dist, removed)
        _remove(workdir, [job_log])
        run_log = workdir / f"killed_{rule}.log"
        with run_log.open("w") as out:
            proc = subprocess.Popen(_distill_cmd(workdir, config=config, cores=1), cwd=workdir, stdout=out,
                                    stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                    start_new_session=True)
        try:
            deadline = time.time() + 300
            while not (workdir / job_log).exists():  # the job's shell has started
                assert proc.poll() is None, run_log.read_text()[-3000:]
                assert time.time() < deadline, f"no {rule} job started in time"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert not (dist / "train.en").exists(), rule  # killed before the merge finished
        if rule == "distill_postprocess":
            assert not (dist / POSTPROCESSED / "shard001-of-003").exists()  # no half-written part

        snakemake(workdir, "--unlock", config=config)
        _snakemake_distill(workdir, config=config)
        for rel, content in expected.items():
            assert (dist / rel).read_bytes() == content, (rule, rel)
        assert (dist / "bin/train.de-en.en.bin").exists()
        assert _mtimes(dist / "shards") == shards  # no decoding redone


@pytest.mark.slow
def test_per_shard_path_matches_assemble_on_the_teachers_shards(distilled, tmp_path):
    """The Snakefile's per-shard path (shard index, post-processing per shard, merge) writes the same bytes as
    pipeline.distill.assemble, the whole-corpus reference, on the teacher's real shards (corpora, ids, statistics)."""
    workdir, config = distilled
    data, dist = data_dir(workdir, config), distill_dir(workdir, config)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    filters = TEST_CONFIG["distill"]["filters"]
    run_cfg = deep_merge(yaml.safe_load((REPO / "config/config.yaml").read_text()), yaml.safe_load(config.read_text()))
    options = ["--selection", "seq_inter", "--metric", "chrf", "--min-length-ratio", filters["min_length_ratio"],
               "--max-length-ratio", filters["max_length_ratio"], "--max-repeat", filters["max_repeat"],
               "--max-fallback-share", run_cfg["distill"]["max_fallback_share"],  # recorded in the statistics
               "--fail-fallback-share", run_cfg["distill"]["fail_fallback_share"]]
    out = tmp_path / "assembled"
    args = ["--shards", *(dist / "shards" / name for name in SHARDS), "--num-shards", 3,
            "--ids", data / "clean/train.ids", "--src-spm", data / "spm/train.de", "--ref-spm", data / "spm/train.en",
            "--src-text", data / "clean/train.de", "--ref-text", data / "clean/train.en",
            "--spm-model", data / "spm/spm.model", "--out-src", out / "train.de", "--out-tgt", out / "train.en",
            "--out-ids", out / "train.ids", "--text-src", out / "train.de.txt", "--text-tgt", out / "train.en.txt",
            "--stats", out / "stats.json", *options]
    proc = subprocess.run([sys.executable, "-m", "pipeline.distill.assemble", *map(str, args)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for mine, theirs in zip(("train.de", "train.en", "train.ids", "train.de.txt", "train.en.txt", "stats.json"), MERGED,
                            strict=True):
        assert (out / mine).read_bytes() == (dist / theirs).read_bytes(), mine
