"""The vocabulary shortlist (pipeline.vmap): which target pieces each source piece may bring into a batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.errors import DataError
from pipeline.vmap import build_vmap, write_vmap

SRC = [
    "▁ein ▁Hund ▁läuft .",
    "▁ein ▁Mann ▁läuft .",
    "▁der ▁Hund ▁schläft .",
    "▁eine ▁Frau ▁schläft .",
    "▁ein ▁Hund ▁und ▁ein ▁Mann .",
]
TGT = [
    "▁a ▁dog ▁runs .",
    "▁a ▁man ▁runs .",
    "▁the ▁dog ▁sleeps .",
    "▁a ▁woman ▁sleeps .",
    "▁a ▁dog ▁and ▁a ▁man .",
]


def test_frequent_pieces_are_always_allowed_and_translations_rank_first():
    always, mapping = build_vmap(SRC, TGT, frequent=2, per_source=2, min_count=1)
    assert always == ["▁a", "."]  # by occurrences: ▁a 6, . 5 (▁dog 3)
    assert mapping["▁Hund"][0] == "▁dog"
    assert mapping["▁Mann"][0] == "▁man"
    assert mapping["▁schläft"][0] == "▁sleeps"
    assert all(len(c) <= 2 and not set(c) & set(always) for c in mapping.values())
    # a pair seen in fewer sentences than min_count is no candidate
    _, strict = build_vmap(SRC, TGT, frequent=2, per_source=5, min_count=2)
    assert "▁woman" not in strict.get("▁Frau", []) and strict["▁Hund"][0] == "▁dog"


def test_file_format_is_ctranslate2s(tmp_path: Path):
    always, mapping = build_vmap(SRC, TGT, frequent=2, per_source=1, min_count=1)
    path = tmp_path / "vmap.txt"
    write_vmap(path, always, mapping)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "\t▁a ."  # empty source: always allowed
    rules = dict(line.split("\t") for line in lines[1:])
    assert rules["▁Hund"] == "▁dog" and all(" " not in key for key in rules)


def test_misaligned_or_empty_corpus_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="empty corpus"):
        build_vmap([], [])
    src, tgt = tmp_path / "train.de", tmp_path / "train.en"
    src.write_text("\n".join(SRC) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(TGT[:-1]) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pipeline.vmap", "--src", str(src), "--tgt", str(tgt),
                           "--out", str(tmp_path / "vmap.txt")], text=True, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode != 0
    assert f"misaligned corpus, split 'train': {src} has 5 lines but {tgt} has 4" in proc.stderr
    assert not (tmp_path / "vmap.txt").exists()
