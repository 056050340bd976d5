"""Over-long dev/test lines fail at data time, naming file and 1-based line (issue 18, item 1).

`pipeline.spm encode --max-pieces N` (N = the models' maximum positions - 1, for EOS) on a real
SentencePiece model trained here; pipeline.spm.check_lengths is the same check for other callers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.errors import ConfigError, DataError
from pipeline.spm import DEFAULT_MAX_POSITIONS, check_lengths, load, max_pieces_for, train

WORDS = "ein Mann mit einem roten Hut läuft über die Straße neben zwei Hunden und einer Frau".split()
DEV = ["ein Mann läuft .", "zwei Hunde neben einer Frau", "", "eine Frau mit einem roten Hut über der Straße ."]
POLICY = "dev and test lines are never cut or dropped: shorten or remove them, on both sides of the split"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("spm")
    corpus = tmp / "train.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i % 7:i % 7 + 3 + i % 5]) for i in range(300)) + "\n",
                      encoding="utf-8")
    train([corpus], tmp / "spm", vocab_size=60, model_type="unigram", character_coverage=1.0, threads=1)
    return tmp / "spm.model"


def pieces(model: Path, line: str) -> int:
    return len(load(model).encode(line, out_type=str))


def encode(model: Path, src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.spm", "encode", "--model", str(model), *extra,
                           str(src), str(out)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def write_dev(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "dev.de"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_limit_is_max_positions_minus_eos():
    assert max_pieces_for(DEFAULT_MAX_POSITIONS) == 1023
    from fairseq.models.transformer import DEFAULT_MAX_SOURCE_POSITIONS, DEFAULT_MAX_TARGET_POSITIONS

    assert DEFAULT_MAX_SOURCE_POSITIONS == DEFAULT_MAX_TARGET_POSITIONS == DEFAULT_MAX_POSITIONS


def test_eos_is_the_one_position_not_counted(model: Path, tmp_path: Path):
    # fairseq's binariser adds EOS: a line of exactly max_pieces_for(P) pieces takes P positions.
    from fairseq.data import Dictionary

    limit = max_pieces_for(DEFAULT_MAX_POSITIONS)
    line = " ".join(load(model).encode(" ".join(WORDS * 100), out_type=str)[:limit])
    dictionary = Dictionary()
    assert len(dictionary.encode_line(line, add_if_not_exist=True, append_eos=True)) == DEFAULT_MAX_POSITIONS
    assert list(check_lengths([line], "dev.de", limit)) == [line]


def test_within_the_limit_the_output_is_unchanged(model: Path, tmp_path: Path):
    src = write_dev(tmp_path, DEV)
    longest = max(pieces(model, line) for line in DEV)
    plain, checked = tmp_path / "plain.de", tmp_path / "checked.de"
    assert encode(model, src, plain).returncode == 0
    proc = encode(model, src, checked, "--max-pieces", str(longest))  # a line of exactly N pieces passes
    assert proc.returncode == 0, proc.stderr
    sp = load(model)
    expected = "".join(" ".join(sp.encode(line, out_type=str)) + "\n" for line in DEV)
    assert checked.read_bytes() == plain.read_bytes() == expected.encode("utf-8")


def test_over_long_dev_line_names_file_line_and_counts(model: Path, tmp_path: Path):
    # The issue's case: a 5,000-word line in the dev set, with the models' real limit.
    long_line = " ".join(WORDS[i % len(WORDS)] for i in range(5000))
    src = write_dev(tmp_path, [DEV[0], DEV[1], long_line, DEV[3]])
    count = pieces(model, long_line)
    assert count > 1023
    out = tmp_path / "spm/dev.de"
    proc = encode(model, src, out, "--max-pieces", str(max_pieces_for(DEFAULT_MAX_POSITIONS)))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {src}: line 3: {count} SentencePiece pieces, more than the 1023 a model takes "
        f"(its maximum positions minus EOS); {POLICY}"
    ]
    assert not out.exists() and not any(out.parent.iterdir()), "nothing written, no temporary file left"


def test_one_piece_over_fails_and_every_long_line_is_listed(model: Path, tmp_path: Path):
    counts = [pieces(model, line) for line in DEV]
    limit = counts[3] - 1  # line 4 is the longest, one piece over; the others fit
    assert sorted(counts)[-2] <= limit
    src = write_dev(tmp_path, DEV)
    proc = encode(model, src, tmp_path / "out.de", "--max-pieces", str(limit))
    assert proc.returncode == 2
    assert f"error: {src}: line 4: {counts[3]} SentencePiece pieces, more than the {limit} a model" in proc.stderr

    many = write_dev(tmp_path, [DEV[3], DEV[0], DEV[3], DEV[3]])
    proc = encode(model, many, tmp_path / "out.de", "--max-pieces", str(limit))
    assert proc.returncode == 2
    assert (f"line 1: {counts[3]} SentencePiece pieces, more than the {limit} a model takes (its maximum "
            f"positions minus EOS) (3 lines over the limit; the others: 3, 4); {POLICY}") in proc.stderr


def test_check_lengths_for_other_callers():
    lines = ["▁ein ▁Hund", "▁a ▁b ▁c ▁d", "▁x"]
    assert list(check_lengths(lines, "extra.de", 4)) == lines
    with pytest.raises(DataError, match=r"^extra\.de: line 2: 4 SentencePiece pieces, more than the 3 a model"):
        list(check_lengths(lines, "extra.de", 3))
    with pytest.raises(ConfigError, match="maximum pieces per line 0: must be >= 1"):
        check_lengths(lines, "extra.de", 0)


def test_bad_max_pieces_option(model: Path, tmp_path: Path):
    proc = encode(model, write_dev(tmp_path, DEV), tmp_path / "out.de", "--max-pieces", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --max-pieces 0: must be >= 1"
