"""pipeline.settings: each stage's directory is keyed by exactly the settings its outputs depend on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, deep_merge

from pipeline.settings import Stage, continue_run, continues, settings_key, stage_layout

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SMOKE = deep_merge(CONFIG, yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()))
STUDENTS = ["student_baseline", "student_word_kd_a0.5_t1", "student_seq_kd", "student_seq_word_kd_a0.5_t1"]


def layout(overrides: dict | None = None, root: Path = Path(".")):
    return stage_layout(deep_merge(SMOKE, overrides or {}), root=root)


def model_keys(lay) -> dict[str, str]:
    return {name: stage.key for name, stage in lay.models.items()}


def test_keys_are_short_hashes_of_canonical_json():
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 1.5})
    lay = layout()
    assert len(lay.data.key) == 8 and int(lay.data.key, 16) >= 0
    assert lay.data_dir == f"work/data/de-en-{lay.data.key}"
    assert lay.distill_dir == f"work/distill/seq_inter_beam2-{lay.distill.key}"
    assert lay.model_dir("teacher") == f"work/models/teacher-{lay.models['teacher'].key}"
    assert lay.kdcache_dir("reference").startswith("work/kdcache/reference-")
    assert lay.results_dir == "results/default"
    record = json.loads(lay.distill.record())
    assert record == {"name": "seq_inter_beam2", "key": lay.distill.key, "settings": lay.distill.settings}
    assert record["settings"]["data"] == lay.data.key and record["settings"]["teacher"] == lay.teacher.key


def test_student_settings_leave_data_teacher_distillation_and_caches_alone():
    first, second = layout(), layout({"experiment": "alpha09", "students": {"alpha": [0.9]}})
    assert second.results_dir == "results/alpha09"
    assert (second.data, second.teacher, second.distill, second.kdcache) == (first.data, first.teacher, first.distill,
                                                                             first.kdcache)
    assert second.models["teacher"] == first.models["teacher"]
    for name in ("student_baseline", "student_seq_kd"):  # no alpha in them: shared too
        assert second.models[name] == first.models[name]
    assert "student_word_kd_a0.9_t1" in second.models and "student_word_kd_a0.5_t1" not in second.models
    # the same student name with other training settings: another directory
    longer = layout({"students": {"train": {"lr": 0.001}}})
    assert all(longer.models[name].key != first.models[name].key for name in STUDENTS)
    assert longer.distill == first.distill and longer.models["teacher"] == first.models["teacher"]


def test_distill_beam_changes_the_distillation_and_what_trains_on_it_only():
    first, beam3 = layout(), layout({"distill": {"beam": 3}})
    assert beam3.data == first.data and beam3.teacher == first.teacher
    assert beam3.distill.key != first.distill.key and beam3.distill_dir.startswith("work/distill/seq_inter_beam3-")
    assert beam3.kdcache["reference"] == first.kdcache["reference"]
    assert beam3.kdcache["distilled"].key != first.kdcache["distilled"].key
    changed = {name for name in first.models if beam3.models[name].key != first.models[name].key}
    assert changed == {"student_seq_kd", "student_seq_word_kd_a0.5_t1"}


def test_add_references_shares_the_distillation_and_keys_what_trains_on_the_mix():
    first, mixed = layout(), layout({"distill": {"add_references": True}})
    assert "add_references" not in first.distill.settings["distill"]  # off: the keys of earlier runs
    assert all("add_references" not in stage.settings for stage in (*first.models.values(), *first.kdcache.values()))
    assert (mixed.data, mixed.teacher, mixed.distill) == (first.data, first.teacher, first.distill)  # no redecoding
    assert first.distill_bin == first.distill_dir + "/bin" and mixed.distill_bin == first.distill_dir + "/bin+ref"
    assert mixed.kdcache["reference"] == first.kdcache["reference"]
    assert mixed.kdcache_dir("distilled").startswith("work/kdcache/distilled+ref-")
    assert mixed.kdcache["distilled"].key != first.kdcache["distilled"].key
    changed = {name for name in first.models if mixed.models[name].key != first.models[name].key}
    assert changed == {"student_seq_kd", "student_seq_word_kd_a0.5_t1"}


def test_a_data_setting_changes_every_key():
    first, other = layout(), layout({"data": {"spm": {"vocab_size": 800}}})
    assert other.data.key != first.data.key and other.teacher.key != first.teacher.key
    assert other.distill.key != first.distill.key
    assert all(other.kdcache[t].key != first.kdcache[t].key for t in ("reference", "distilled"))
    assert all(other.models[name].key != first.models[name].key for name in first.models)
    assert all(other.ct2[name].key != first.ct2[name].key for name in first.ct2)


def test_settings_that_do_not_change_outputs_keep_every_key():
    first = layout()
    same = layout({"data": {"mirror": "/elsewhere"}, "distill": {"shard_size": 5, "max_tokens": 100,
                                                                  "fail_fallback_share": 0.5},
                   "resources": {"train": {"threads": 8}}, "experiment": "other", "evaluate": {"beam": 7},
                   "report": {"set": "test"}})
    assert (same.data, same.teacher, same.distill, same.kdcache) == (first.data, first.teacher, first.distill, first.kdcache)
    assert model_keys(same) == model_keys(first) and same.ct2 == first.ct2


def test_teacher_cache_and_backend_settings():
    first = layout()
    topk = layout({"students": {"kd_topk": 4}})
    assert topk.distill == first.distill and topk.kdcache["reference"].key != first.kdcache["reference"].key
    assert topk.models["student_baseline"] == first.models["student_baseline"]
    assert topk.models["student_word_kd_a0.5_t1"].key != first.models["student_word_kd_a0.5_t1"].key
    assert first.student_kdcache("student_word_kd_a0.5_t1") == first.kdcache["reference"]
    assert first.student_kdcache("student_baseline") is None
    online = layout({"students": {"kd_cache": False}})
    assert online.student_kdcache("student_word_kd_a0.5_t1") is None
    assert online.models["student_word_kd_a0.5_t1"].key != first.models["student_word_kd_a0.5_t1"].key
    # CTranslate2 decoding of the distillation: its compute type and shortlist belong to the distillation's key
    ct2 = layout({"distill": {"backend": "ctranslate2"}})
    int8 = layout({"distill": {"backend": "ctranslate2"}, "ct2": {"compute_type": {"cpu": "float32"}}})
    assert ct2.distill.key != first.distill.key and int8.distill.key != ct2.distill.key
    assert layout({"ct2": {"compute_type": {"cpu": "float32"}}}).distill == first.distill  # fairseq decodes: no matter
    shortlist = layout({"ct2": {"vmap": {"enabled": True}}})
    assert shortlist.ct2["teacher"].key != first.ct2["teacher"].key and shortlist.models == first.models


def test_ensemble_members_and_external_teachers(tmp_path: Path):
    single, pair = layout(), layout({"teacher": {"ensemble": 2}})
    assert pair.models["teacher"] == single.models["teacher"]  # the first member is the single teacher
    assert pair.models["teacher_2"].settings["train"]["seed"] == single.models["teacher"].settings["train"]["seed"] + 1
    assert pair.teacher.key != single.teacher.key and pair.distill.key != single.distill.key
    assert "teacher_ensemble" in pair.models and "teacher_ensemble" not in single.models
    assert pair.data == single.data
    # teacher caches: one teacher's is keyed by its model, an ensemble's by the ensemble; students at T = 1 read
    # the ensemble's, those at another T run the members online
    assert single.kdcache["reference"].settings["teacher"] == single.models["teacher"].key
    assert pair.kdcache["reference"].settings["teacher"] == pair.teacher.key
    assert pair.student_kdcache("student_word_kd_a0.5_t1") == pair.kdcache["reference"]
    assert pair.student_kdcache("student_seq_word_kd_a0.5_t1") == pair.kdcache["distilled"]
    hot = layout({"teacher": {"ensemble": 2}, "students": {"temperature": [1.0, 2.0]}})
    assert hot.student_kdcache("student_word_kd_a0.5_t1") == pair.kdcache["reference"]
    assert hot.student_kdcache("student_word_kd_a0.5_t2") is None
    assert layout({"students": {"temperature": [2.0]}}).student_kdcache("student_word_kd_a0.5_t2") is not None
    # an external teacher's files are the data stage's SentencePiece model and dictionary
    external = layout({"teacher": {"checkpoints": ["ckpt/model.pt"]}}, root=tmp_path)
    assert external.data.key != single.data.key
    assert external.data.settings["teacher_vocabulary"]["checkpoints"] == [str(tmp_path / "ckpt/model.pt")]
    assert external.models["teacher"].settings["checkpoint"] == str(tmp_path / "ckpt/model.pt")
    ct2 = layout({"teacher": {"ct2_model": "marian"}, "distill": {"backend": "ctranslate2"}}, root=tmp_path)
    assert "teacher" not in ct2.models and ct2.data == single.data
    assert ct2.teacher.settings == {"ct2_model": str(tmp_path / "marian")}


def test_user_files_key_the_data_by_path_and_size(tmp_path: Path):
    for name in ("train.de", "train.en", "dev.de", "dev.en", "test.de", "test.en"):
        (tmp_path / name).write_text("a\n")
    files = {split: {"src": f"{split}.de", "tgt": f"{split}.en"} for split in ("train", "dev", "test")}
    first = layout({"data": {"source": "files", "files": files}}, root=tmp_path)
    assert first.data.settings["data"]["files"]["train"]["src"] == {"path": "train.de", "bytes": 2}
    (tmp_path / "train.en").write_text("a longer line\n")
    assert layout({"data": {"source": "files", "files": files}}, root=tmp_path).data.key != first.data.key


def test_continues_only_a_shorter_run_of_the_same_settings():
    base = layout().models["teacher"].settings
    longer = {**base, "train": {**base["train"], "max_update": 120, "log_interval": 5}}
    unlimited = {**base, "train": {**base["train"], "max_update": 0}}
    assert continues(base, longer) and not continues(longer, base)
    assert continues(base, unlimited) and continues(longer, unlimited) and not continues(unlimited, longer)
    assert not continues(base, base)
    other_lr = {**longer, "train": {**longer["train"], "lr": 0.5}}
    assert not continues(base, other_lr)
    assert not continues({**base, "data": "00000000"}, longer)


def make_model_dir(root: Path, stage: Stage, updates: int | None) -> Path:
    directory = root / stage.dir
    directory.mkdir(parents=True)
    (directory / "settings.json").write_text(stage.record())
    if updates is not None:
        (directory / "checkpoints").mkdir()
        (directory / "checkpoints" / "checkpoint_last.pt").write_text(str(updates))
        (directory / "train.jsonl").write_text(f'{{"num_updates": {updates}}}\n')
    return directory


def test_continue_run_copies_the_furthest_shorter_run(tmp_path: Path):
    def teacher(max_update: int, lr: float = 0.003) -> Stage:
        return layout({"train": {"max_update": max_update}, "teacher": {"train": {"lr": lr}}}).models["teacher"]

    short = make_model_dir(tmp_path, teacher(20), 20)
    middle = make_model_dir(tmp_path, teacher(40), 40)
    make_model_dir(tmp_path, teacher(80), 80)  # longer than the new run: never continued
    make_model_dir(tmp_path, teacher(30, lr=0.1), 30)  # another run
    target = make_model_dir(tmp_path, teacher(60), None)
    assert continue_run(target) == middle
    assert (target / "checkpoints/checkpoint_last.pt").read_text() == "40"
    assert (target / "train.jsonl").read_text() == '{"num_updates": 40}\n'
    assert (middle / "checkpoints/checkpoint_last.pt").read_text() == "40"  # the earlier run stays
    assert continue_run(target) is None  # it has a checkpoint of its own now
    alone = make_model_dir(tmp_path / "other", teacher(60), None)
    assert continue_run(alone) is None and not (alone / "checkpoints").exists()
    assert short.is_dir()


def test_a_run_of_several_seeds_takes_the_students_a_one_seed_run_trained(tmp_path: Path):
    one = layout({"students": {"seeds": [2]}}).models
    several = layout({"students": {"seeds": [1, 2]}}).models
    other_lr = layout({"students": {"seeds": [1, 2], "train": {"lr": 0.5}}}).models
    # the names differ (student_baseline, student_baseline_s2), so do the directories: the seed-2 student of the
    # run of two seeds starts from the one-seed run's, and trains no further than its end
    assert one["student_baseline"].dir != several["student_baseline_s2"].dir
    assert continues(one["student_baseline"].settings, several["student_baseline_s2"].settings)
    assert continues(several["student_baseline_s2"].settings, one["student_baseline"].settings)
    assert not continues(one["student_baseline"].settings, several["student_baseline_s1"].settings)  # another seed
    assert not continues(one["student_baseline"].settings, other_lr["student_baseline_s2"].settings)
    assert not continues(one["student_baseline"].settings, one["student_baseline"].settings)
    assert not continues(one["student_baseline"].settings, several["student_seq_kd_s2"].settings)
    trained = make_model_dir(tmp_path, one["student_baseline"], 30)
    make_model_dir(tmp_path, several["student_baseline_s1"], 50)  # seed 1: not this model
    make_model_dir(tmp_path, other_lr["student_baseline_s2"], 50)
    target = make_model_dir(tmp_path, several["student_baseline_s2"], None)
    assert continue_run(target) == trained
    assert (target / "checkpoints/checkpoint_last.pt").read_text() == "30"
    # and the other way round: a one-seed run of seed 1 takes the run of two seeds' student_baseline_s1
    back = make_model_dir(tmp_path / "back", layout().models["student_baseline"], None)
    first = make_model_dir(tmp_path / "back", several["student_baseline_s1"], 40)
    assert continue_run(back) == first


@pytest.mark.parametrize("name", ["default", "alpha0.9", "b-3_x"])
def test_results_dir_is_the_experiment(name: str):
    assert layout({"experiment": name}).results_dir == f"results/{name}"
