"""Which teacher a run distils, and the checks of a teacher the run does not train (before any job runs).

    kind = teacher_kind(config)          # "trained" | "checkpoints" | "ct2"
    ext = check_external_teacher(config) # teacher.checkpoints: files, languages, one dictionary
    ct2 = check_ct2_teacher(config)      # teacher.ct2_model: a CTranslate2 directory with its own spm

An external fairseq teacher (teacher.checkpoints) replaces teacher training: the data stage encodes
with its SentencePiece model and binarises with its dictionary, so the students share both. A
CTranslate2 teacher (teacher.ct2_model) only decodes the training set, text to text; the students
get their own SentencePiece model and dictionary, so word-level KD from it is impossible.
Called by pipeline/rules/common.smk at parse time; errors name the config key and the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, ModelError

TRAINED, CHECKPOINTS, CT2 = "trained", "checkpoints", "ct2"
FAIRSEQ_SPECIALS = 4  # <s>, <pad>, </s>, <unk>: in every fairseq dictionary before the file's symbols


def teacher_kind(config: dict) -> str:
    """trained (teacher.ensemble teachers of ours), checkpoints (external fairseq) or ct2 (a CTranslate2 teacher)."""
    t = config["teacher"]
    if t["checkpoints"] and t["ct2_model"]:
        raise ConfigError("config teacher.checkpoints and teacher.ct2_model: give one teacher, not both")
    if (t["checkpoints"] or t["ct2_model"]) and t["ensemble"] != 1:
        which = "teacher.checkpoints (each checkpoint is a member)" if t["checkpoints"] else "teacher.ct2_model"
        raise ConfigError(f"config teacher.ensemble: {t['ensemble']} trains teachers; with {which} it must be 1")
    if t["checkpoints"]:
        return CHECKPOINTS
    if t["ct2_model"]:
        return CT2
    return TRAINED


@dataclass(frozen=True)
class ExternalTeacher:
    checkpoints: list[Path]
    spm: Path
    dictionary: Path  # one dictionary for both languages (fairseq-preprocess --srcdict with --joined-dictionary)


def _same_text(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def _given_dictionary(value: str, src: str, tgt: str) -> Path:
    path = Path(value)
    if path.is_dir():
        files = [path / f"dict.{lang}.txt" for lang in (src, tgt)]
        for file in files:
            if not file.is_file():
                raise ModelError(f"config teacher.dict: {file}: no such dictionary (languages {src}->{tgt})")
        if not _same_text(*files):
            raise ModelError(f"config teacher.dict: {files[0]} and {files[1]} differ: the students share the teacher's "
                             "embeddings, which needs one joined dictionary")
        return files[0]
    if not path.is_file():
        raise ModelError(f"config teacher.dict: {path}: no such file or directory")
    return path


def _own_folders(checkpoint: Path, cfg_data: str | None) -> list[Path]:
    """Where a checkpoint's own dictionaries may be: beside it, or the data directory its config records."""
    candidates = [checkpoint.parent]
    if cfg_data:
        candidates.append(Path(str(cfg_data).split(os.pathsep)[0]))
    return [folder for folder in candidates if folder.is_dir()]


def _recorded_langs(task, folders: list[Path]) -> tuple[str | None, str | None]:
    """The checkpoint's languages: as its config records them, else from its binarised data's file names
    (train.de-en.de.bin), else from its two dictionaries' names (dict.de.txt, dict.en.txt: order unknown)."""
    if task.get("source_lang") or task.get("target_lang"):
        return task.get("source_lang"), task.get("target_lang")
    for folder in folders:
        for path in sorted(folder.glob("*.*-*.*.idx")):
            pair = path.name.split(".")[1].split("-")
            if len(pair) == 2:
                return pair[0], pair[1]
    return None, None


def _own_dictionary(checkpoint: Path, folders: list[Path], src: str, tgt: str) -> Path | None:
    """The dictionary beside the checkpoint or in the data directory its config records (None: neither has one)."""
    for folder in folders:
        files = [folder / f"dict.{lang}.txt" for lang in (src, tgt)]
        if all(f.is_file() for f in files):
            if not _same_text(*files):
                raise ModelError(f"{files[0]} and {files[1]} differ (the dictionaries of {checkpoint}): the students share "
                                 "the teacher's embeddings, which needs one joined dictionary")
            return files[0]
    return None


def _symbols(dictionary: Path) -> int:
    return FAIRSEQ_SPECIALS + sum(1 for line in dictionary.read_text(encoding="utf-8").splitlines() if line.strip())


def check_external_teacher(config: dict) -> ExternalTeacher:
    """teacher.checkpoints: every file exists and is a fairseq checkpoint, its recorded languages are
    src/tgt, every dictionary found (teacher.dict, each checkpoint's own) is the same and fits every
    checkpoint's embeddings; the SentencePiece model exists."""
    from pipeline.decoding.fairseq_model import read_checkpoint

    t, src, tgt = config["teacher"], config["src"], config["tgt"]
    checkpoints = [Path(p) for p in t["checkpoints"]]
    for path in checkpoints:
        if not path.is_file():
            raise ModelError(f"config teacher.checkpoints: {path}: no such checkpoint file")
    dictionaries: list[Path] = [_given_dictionary(t["dict"], src, tgt)] if t["dict"] else []
    embeddings: dict[Path, int] = {}
    for path in checkpoints:
        state = read_checkpoint(path)
        task = state["cfg"].task
        folders = _own_folders(path, task.get("data"))
        langs = _recorded_langs(task, folders)
        for key, lang, recorded in (("src", src, langs[0]), ("tgt", tgt, langs[1])):
            if recorded is not None and recorded != lang:
                raise ConfigError(f"config teacher.checkpoints: {path} translates {langs[0]}->{langs[1]}, "
                                  f"but config {key} is '{lang}' ({src}->{tgt})")
        own = _own_dictionary(path, folders, src, tgt)
        if own is not None:
            dictionaries.append(own)
        weights = state["model"].get("encoder.embed_tokens.weight")
        if weights is not None:
            embeddings[path] = int(weights.shape[0])
    if not dictionaries:
        raise ModelError(f"config teacher.dict: not set, and no dict.{src}.txt / dict.{tgt}.txt beside {checkpoints[0]} "
                         "or in its recorded data directory: give the teacher's dictionary")
    first = dictionaries[0]
    for other in dictionaries[1:]:
        if not _same_text(first, other):
            raise ModelError(f"config teacher: the teachers' dictionaries differ: {first} and {other} "
                             "(an ensemble and its students need one vocabulary)")
    symbols = _symbols(first)
    for path, rows in embeddings.items():
        if rows != symbols:
            raise ModelError(f"config teacher.checkpoints: {path} has {rows} embeddings, but dictionary {first} gives "
                             f"{symbols} symbols: not this checkpoint's dictionary")
    spm = Path(t["spm"]) if t["spm"] else checkpoints[0].parent / "spm.model"
    if not spm.is_file():
        key = "teacher.spm" if t["spm"] else f"teacher.spm (not set, and {spm} does not exist)"
        raise ModelError(f"config {key}: {spm}: no such SentencePiece model")
    return ExternalTeacher(checkpoints=checkpoints, spm=spm, dictionary=first)


def check_ct2_teacher(config: dict, word_kd_students: list[str]) -> Path:
    """teacher.ct2_model: a CTranslate2 directory with its own SentencePiece model(s); no word-level KD."""
    from pipeline.decoding.ct2_dir import model_dir, read_metadata, spm_models

    path = Path(config["teacher"]["ct2_model"])
    if word_kd_students:
        raise ConfigError(f"config students.variants: {', '.join(word_kd_students)} need the teacher's token distributions, "
                          f"but teacher.ct2_model {path} is a text-to-text teacher with its own vocabulary (the students "
                          "get their own SentencePiece model and dictionary): use baseline, seq_kd, or a fairseq teacher")
    if not path.is_dir():
        raise ModelError(f"config teacher.ct2_model: {path}: no such directory")
    try:
        model_dir(path)
        spm_models(path)
    except ModelError as err:
        raise ModelError(f"config teacher.ct2_model: {err}") from None
    meta = read_metadata(path)
    for key, field in (("src", "source_lang"), ("tgt", "target_lang")):
        if meta.get(field) not in (None, config[key]):
            raise ConfigError(f"config teacher.ct2_model: {path} translates {meta.get('source_lang')}->"
                              f"{meta.get('target_lang')} (pipeline.json), but config {key} is '{config[key]}'")
    return path
