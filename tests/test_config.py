"""The workflow config: one home for every default, and config checks that name their keys (dry runs)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, SNAKEMAKE, data_dir, deep_merge, snakemake, write_config

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def walk(node, path=""):
    """Every (path, mapping) of a nested schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def test_schema_holds_no_defaults():
    """config/config.yaml is the one home of defaults: the schema only checks."""
    assert [path for path, node in walk(SCHEMA) if "default" in node] == []


def test_every_schema_key_has_its_value_in_config_yaml():
    """Every key the schema declares for a section of fixed keys is required, so config.yaml carries a value for it
    (no rule or CLI call needs a fallback), and config.yaml, smoke.yaml and gpu.yaml merged into it all validate."""
    overrides = {"/properties/teacher": {"train"}, "/properties/students": {"train"}}  # optional: override train
    for path, node in walk(SCHEMA):
        if "properties" in node and path != "/$defs/train_settings":  # (the top-level train requires them all)
            missing = set(node["properties"]) - set(node.get("required", [])) - overrides.get(path, set())
            assert not missing, f"schema {path}: not required, so config.yaml need not give them: {missing}"
    jsonschema.Draft202012Validator(SCHEMA).validate(CONFIG)
    for name in ("smoke.yaml", "gpu.yaml"):
        jsonschema.Draft202012Validator(SCHEMA).validate(deep_merge(CONFIG, yaml.safe_load((REPO / "config" / name).read_text())))
    train = SCHEMA["properties"]["train"]
    assert set(train["required"]) == set(SCHEMA["$defs"]["train_settings"]["properties"]) == set(CONFIG["train"])


def parser_of(module: str, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ArgumentParser a stage CLI's main() builds (caught at parse_args, before it does anything)."""

    class Built(Exception):
        pass

    parsers = []

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise Built

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(Built):
            importlib.import_module(module).main()
    finally:
        argparse.ArgumentParser.parse_args = original
    return parsers[0]


def defaults(parser: argparse.ArgumentParser, sub: str | None = None) -> dict:
    if sub:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[sub]
    return {a.dest: a.default for a in parser._actions}


# (CLI module, subcommand, argparse dest, config path, how the option relates to the key)
CLI_KEYS = [
    ("pipeline.normalize", None, "off", "data.normalize_punctuation", "negated"),
    ("pipeline.clean", None, "max_tokens", "data.clean.max_tokens", "same"),
    ("pipeline.clean", None, "max_length_ratio", "data.clean.max_length_ratio", "same"),
    ("pipeline.clean", None, "keep_identical", "data.clean.remove_identical", "negated"),
    ("pipeline.clean", None, "keep_duplicates", "data.clean.remove_duplicates", "negated"),
    ("pipeline.spm", "train", "model_type", "data.spm.model_type", "same"),
    ("pipeline.spm", "train", "character_coverage", "data.spm.character_coverage", "same"),
    ("pipeline.train", None, "best_metric", "train.best_metric", "same"),
    ("pipeline.train", None, "average_last", "train.average_last", "same"),
    ("pipeline.distill.assemble", None, "selection", "distill.selection", "same"),
    ("pipeline.distill.assemble", None, "metric", "distill.seq_inter_metric", "same"),
    ("pipeline.distill.assemble", None, "min_length_ratio", "distill.filters.min_length_ratio", "same"),
    ("pipeline.distill.assemble", None, "max_length_ratio", "distill.filters.max_length_ratio", "same"),
    ("pipeline.distill.assemble", None, "max_repeat", "distill.filters.max_repeat", "same"),
    ("pipeline.distill.assemble", None, "max_repeat_ngram", "distill.filters.max_repeat_ngram", "same"),
    ("pipeline.distill.assemble", None, "on_filtered", "distill.filters.on_filtered", "same"),
    ("pipeline.distill.postprocess", None, "selection", "distill.selection", "same"),
    ("pipeline.distill.postprocess", None, "metric", "distill.seq_inter_metric", "same"),
    ("pipeline.distill.postprocess", None, "min_length_ratio", "distill.filters.min_length_ratio", "same"),
    ("pipeline.distill.postprocess", None, "max_length_ratio", "distill.filters.max_length_ratio", "same"),
    ("pipeline.distill.postprocess", None, "max_repeat", "distill.filters.max_repeat", "same"),
    ("pipeline.distill.postprocess", None, "max_repeat_ngram", "distill.filters.max_repeat_ngram", "same"),
    ("pipeline.distill.postprocess", None, "on_filtered", "distill.filters.on_filtered", "same"),
    ("pipeline.distill.merge", None, "max_fallback_share", "distill.max_fallback_share", "same"),
    ("pipeline.distill.merge", None, "fail_fallback_share", "distill.fail_fallback_share", "same"),
    ("pipeline.distill.postprocess", None, "metric", "distill.seq_inter_metric", "same"),
    ("pipeline.distill.postprocess", None, "max_repeat", "distill.filters.max_repeat", "same"),
    ("pipeline.distill.postprocess", None, "on_filtered", "distill.filters.on_filtered", "same"),
    ("pipeline.distill.merge", None, "max_fallback_share", "distill.max_fallback_share", "same"),
    ("pipeline.distill.merge", None, "fail_fallback_share", "distill.fail_fallback_share", "same"),
    ("pipeline.vmap", None, "frequent", "ct2.vmap.frequent", "same"),
    ("pipeline.vmap", None, "per_source", "ct2.vmap.per_source", "same"),
    ("pipeline.report", None, "report_set", "report.set", "same"),
    ("pipeline.report", None, "bootstrap_samples", "report.bootstrap.samples", "same"),
    ("pipeline.report", None, "bootstrap_seed", "report.bootstrap.seed", "same"),
]


@pytest.mark.parametrize(("module", "sub", "dest", "key", "relation"), CLI_KEYS, ids=[f"{c[0]}:{c[2]}" for c in CLI_KEYS])
def test_cli_defaults_equal_the_config_values(module, sub, dest, key, relation, monkeypatch):
    """A stage CLI run by hand behaves as the workflow runs it (non-decoding CLIs; the decoding ones have their own test)."""
    monkeypatch.setattr(sys, "argv", [module])
    value = CONFIG
    for part in key.split("."):
        value = value[part]
    default = defaults(parser_of(module), sub)[dest]
    assert default == (not value if relation == "negated" else value), f"{module} --{dest.replace('_', '-')} vs config {key}"


# ------------------------------------------------------------------------------------------------
# Config checks through the real Snakefile: a dry run fails with the key's name and runs nothing


def dry_run(tmp_path: Path, overrides: dict, *targets: str, check: bool = False):
    cfg = write_config(tmp_path, overrides)
    return snakemake(tmp_path, "-n", "-p", *(targets or ("all",)), config=cfg, check=check)


def assert_config_error(proc, *needles: str, tmp_path: Path):
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "ConfigError" in proc.stdout, proc.stdout[-3000:]
    for needle in needles:
        assert needle in proc.stdout, proc.stdout[-3000:]
    assert "InputFunctionException" not in proc.stdout and "Duplicate output" not in proc.stdout
    assert not (tmp_path / "work").exists() and not (tmp_path / "logs").exists()  # nothing ran


def test_same_source_and_target_language_names_the_keys(tmp_path: Path):
    proc = dry_run(tmp_path, {"src": "en", "tgt": "en"})
    assert_config_error(proc, "config src and tgt: both are 'en'", tmp_path=tmp_path)


def test_evaluation_sets_empty_or_without_the_report_set(tmp_path: Path):
    proc = dry_run(tmp_path / "empty", {"evaluate": {"sets": []}})
    assert_config_error(proc, "config evaluate.sets: empty", tmp_path=tmp_path / "empty")
    proc = dry_run(tmp_path / "dev", {"evaluate": {"sets": ["dev"]}})
    assert_config_error(proc, "config report.set: 'test' is not evaluated", "dev", tmp_path=tmp_path / "dev")
    proc = dry_run(tmp_path / "typo", {"evaluate": {"sets": ["tset"]}})
    assert_config_error(proc, "config evaluate.sets: unknown set 'tset'", tmp_path=tmp_path / "typo")
    # the report on another evaluated set: planned, and summarised from that set's evaluations
    proc = dry_run(tmp_path / "ok", {"evaluate": {"sets": ["dev"]}, "report": {"set": "dev"}}, "report", check=True)
    assert "--evals results/default/eval/teacher/dev.json" in proc.stdout
    assert "results/default/eval/teacher/test.json" not in proc.stdout


def test_side_by_side_speedups_need_a_built_in_report_set(tmp_path: Path):
    """evaluate.speedup_rounds times the students on report.set's spm-encoded source: an extra set (raw text) as
    report.set is refused, naming both keys, unless the rounds are 0; on test, one job per student and backend."""
    (tmp_path / "mine.de").write_text("ein Hund .\n")
    (tmp_path / "mine.en").write_text("a dog .\n")
    mine = {"extra_sets": {"mine": {"src": str(tmp_path / "mine.de"), "ref": str(tmp_path / "mine.en")}}}
    proc = dry_run(tmp_path / "extra", {"evaluate": mine, "report": {"set": "mine"}})
    assert_config_error(proc, "config evaluate.speedup_rounds: 2 times the students beside the teacher on report.set, "
                        "but 'mine' is an extra set", "evaluate.speedup_rounds: 0", tmp_path=tmp_path / "extra")
    proc = dry_run(tmp_path / "off", {"evaluate": {**mine, "speedup_rounds": 0}, "report": {"set": "mine"}}, check=True)
    assert "speedup_vs_teacher" not in proc.stdout and "--speedups" not in proc.stdout
    proc = dry_run(tmp_path / "test", {}, check=True)
    assert jobs(proc.stdout)["speedup_vs_teacher"] == 4 * 2  # four students; fairseq and CTranslate2 int8
    assert "--speedups results/default/eval/student_baseline/test.speedup-fairseq.json" in proc.stdout


def jobs(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    counts = {}
    for line in table.splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_no_student_variants_plans_the_teacher_alone(tmp_path: Path):
    """students.variants: [] is a teacher-only run: no distillation, no conversion but the evaluation's own."""
    proc = dry_run(tmp_path / "fairseq", {"students": {"variants": []}, "evaluate": {"backends": ["fairseq"]}}, check=True)
    counts = jobs(proc.stdout)
    assert counts["train_model"] == 1 and counts["report_summary"] == 1, counts
    assert not [rule for rule in counts if rule.startswith("distill") or rule.startswith("ct2")], counts
    proc = dry_run(tmp_path / "ct2", {"students": {"variants": []}, "distill": {"backend": "ctranslate2"}}, check=True)
    counts = jobs(proc.stdout)
    assert counts["ct2_convert"] == 1 and counts["evaluate_model_ct2"] == 1, counts  # the teacher's CTranslate2 evaluation
    assert not [rule for rule in counts if rule.startswith("distill")], counts
    # students on references alone need no distillation either
    counts = jobs(dry_run(tmp_path / "refs", {"students": {"variants": ["baseline", "word_kd"]}}, check=True).stdout)
    assert counts["train_model"] == 3 and not [rule for rule in counts if rule.startswith("distill")], counts


def test_seeds_and_alphas_plan_a_student_each_and_the_report_reads_every_set(tmp_path: Path):
    """students.seeds: [1, 2] x alpha: [0.3, 0.7] on the smoke config: each student once per seed (fairseq --seed,
    _s<seed> in the name), the teacher once; the report reads dev and test with their hypotheses and references."""
    proc = dry_run(tmp_path, {"students": {"seeds": [1, 2], "alpha": [0.3, 0.7]}, "evaluate": {"sets": ["dev", "test"]}},
                   check=True)
    seeds = dict(re.findall(r"--save-dir work/models/(\S+)-[0-9a-f]{8}/checkpoints .*?--seed (\d+) ", proc.stdout))
    expected = {"teacher": "1"}
    for seed in ("1", "2"):
        expected |= {f"student_baseline_s{seed}": seed, f"student_seq_kd_s{seed}": seed}
        expected |= {f"student_{v}_a{a}_t1_s{seed}": seed for v in ("word_kd", "seq_word_kd") for a in ("0.3", "0.7")}
    assert seeds == expected
    counts = jobs(proc.stdout)
    assert counts["train_model"] == 13 and counts["evaluate_model"] == 26 and counts["report_summary"] == 1, counts
    report = next(line for line in proc.stdout.splitlines() if "-m pipeline.report" in line)
    evals = re.search(r"--evals (.*?) --set", report).group(1).split()
    assert sorted(evals) == sorted(f"results/default/eval/{m}/{s}.json" for m in expected for s in ("dev", "test"))
    assert "--set test --bootstrap-samples 1000 --bootstrap-seed 12345" in report
    assert "--best-csv results/default/summary_best.csv" in report
    inputs = proc.stdout.split("rule report_summary:", 1)[1].split("\n\n", 1)[0]
    raw = data_dir(tmp_path).relative_to(tmp_path) / "raw"
    for name in ("student_seq_word_kd_a0.7_t1_s2/dev.beam.txt", "teacher/test.beam.txt", f"{raw}/dev.en", f"{raw}/test.en"):
        assert name in inputs, name
    # one seed (the default): today's names
    names = set(re.findall(r"work/models/([^/\s]+)-[0-9a-f]{8}/model\.pt", dry_run(tmp_path / "one", {}, check=True).stdout))
    assert names == {"teacher", "student_baseline", "student_seq_kd", "student_word_kd_a0.5_t1", "student_seq_word_kd_a0.5_t1"}


def test_student_seed_in_students_train_names_students_seeds(tmp_path: Path):
    proc = dry_run(tmp_path, {"students": {"train": {"seed": 3}}})
    assert_config_error(proc, "config students.train.seed: the students' seeds are students.seeds", tmp_path=tmp_path)


def test_variant_train_overrides_students_train_for_that_variant_only(tmp_path: Path):
    """students.variant_train.seq_word_kd: the seq_word_kd student trains with its own batch, the other students as
    before (their directory keys unchanged: nothing of theirs is retrained); a variant that does not exist is refused."""
    def trained(overrides: dict, where: str) -> dict[str, tuple[str, str]]:
        out = dry_run(tmp_path / where, overrides, check=True).stdout
        return {m.group(1).rsplit("-", 1)[0]: (m.group(1), m.group(2))
                for m in re.finditer(r"--output work/models/(\S+)/model\.pt .*?--max-tokens (\d+) ", out)}

    before = trained({}, "before")
    after = trained({"students": {"variant_train": {"seq_word_kd": {"max_tokens": 500}}}}, "after")
    assert set(before) == set(after) and len(before) == 5
    for name, (directory, max_tokens) in after.items():
        if name == "student_seq_word_kd_a0.5_t1":
            assert max_tokens == "500" and directory != before[name][0]
        else:
            assert (directory, max_tokens) == before[name] and max_tokens == "2000"  # smoke.yaml's train.max_tokens
    proc = dry_run(tmp_path / "typo", {"students": {"variant_train": {"seq_wordkd": {"max_tokens": 500}}}})
    assert proc.returncode != 0 and "seq_wordkd" in proc.stdout
    assert not (tmp_path / "typo/work").exists()


def shard_commands(output: str) -> list[str]:
    return [line for line in output.splitlines() if "pipeline.distill.decode_shard" in line]


def test_ctranslate2_distillation_carries_each_batch_flag_once(smoke_data: Path, tmp_path: Path):
    """Precedence: ct2.max_tokens / ct2.batch_size where set, else distill's own (each key on its own)."""
    # the decoding jobs are planned once the shard index (a checkpoint) exists: the smoke data, indexed for real
    shutil.copytree(smoke_data, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".snakemake"))
    index = data_dir(tmp_path, write_config(tmp_path)).relative_to(tmp_path) / "distill_index-700.json"
    snakemake(tmp_path, str(index), config=write_config(tmp_path))
    proc = dry_run(tmp_path, {"distill": {"backend": "ctranslate2", "max_tokens": 2000}}, "distill", check=True)
    commands = shard_commands(proc.stdout)
    assert len(commands) == 3
    for command in commands:
        assert command.count("--max-tokens") == 1 and "--max-tokens 1000" in command  # ct2.max_tokens
        assert command.count("--batch-size") == 1 and "--batch-size 8" in command
        assert "--compute-type cpu=int8,cuda=float16" in command
    proc = dry_run(tmp_path, {"distill": {"backend": "ctranslate2", "max_tokens": 2000},
                              "ct2": {"max_tokens": None, "batch_size": None}}, "distill", check=True)
    assert len(shard_commands(proc.stdout)) == 3
    for command in shard_commands(proc.stdout):
        assert command.count("--max-tokens") == 1 and "--max-tokens 2000" in command and "--batch-size" not in command
    proc = dry_run(tmp_path, {"distill": {"max_tokens": 2000}}, "distill", check=True)
    assert len(shard_commands(proc.stdout)) == 3
    for command in shard_commands(proc.stdout):  # fairseq: the stage's own, ct2.* unused
        assert command.count("--max-tokens") == 1 and "--max-tokens 2000" in command and "--batch-size" not in command


def test_stage_files_do_not_depend_on_include_order(tmp_path: Path):
    """The Snakefile with its stage files included in reverse order (common.smk first) plans the same jobs."""
    text = (REPO / "Snakefile").read_text()
    includes = re.findall(r'^include: "pipeline/rules/(?!common)\w+\.smk"\n', text, re.M)
    assert len(includes) == 10  # (kdcache.smk: the teacher caches; experiments.smk: settings.json, records, compare)
    reordered = text
    for line in includes:
        reordered = reordered.replace(line, "")
    anchor = 'include: "pipeline/rules/common.smk"'
    head, tail = reordered.split(anchor)
    tail = tail.split("\n", 1)
    reordered = head + anchor + tail[0] + "\n" + "".join(reversed(includes)) + tail[1]
    snakefile = REPO / "Snakefile.reversed-includes"  # beside the real one: the includes are relative to it
    snakefile.write_text(reordered)
    try:
        cfg = write_config(tmp_path, {"ct2": {"vmap": {"enabled": True}}, "distill": {"backend": "ctranslate2"}})
        outputs = []
        for path in (REPO / "Snakefile", snakefile):
            cmd = [*SNAKEMAKE, "-n", "all", "export", "-s", str(path), "--directory", str(tmp_path), "--cores", "2",
                   "--configfile", str(cfg)]
            proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:]
            outputs.append(jobs(proc.stdout))
    finally:
        snakefile.unlink()
    assert outputs[0] == outputs[1] and outputs[0]["ct2_vmap"] == 1



# The decoding CLIs (pipeline.decoding.add_decoding_args) against the stage settings they run with.
# Batches: no flag means the backend's default batch, fairseq's DEFAULT_MAX_TOKENS tokens, which the
# config names explicitly. --fp16 is a switch (off unless given): config distill.fp16 applies on GPU only.
DECODING_CLIS = {
    "pipeline.evaluate": "evaluate",
    "pipeline.export": "evaluate",
    "pipeline.translate": "evaluate",
    "pipeline.distill.decode_shard": "distill",
}
DECODING_KEYS = ["beam", "nbest", "lenpen", "max_len_a", "max_len_b", "max_tokens", "batch_size", "speed_runs"]


@pytest.mark.parametrize("module", sorted(DECODING_CLIS))
def test_decoding_cli_defaults_equal_the_config_values(module, monkeypatch):
    from pipeline.decoding.batching import DEFAULT_MAX_TOKENS

    stage = CONFIG[DECODING_CLIS[module]]
    monkeypatch.setattr(sys, "argv", [module])
    cli = defaults(parser_of(module))
    compared = [key for key in DECODING_KEYS if key in cli and key in stage]
    assert {"beam", "lenpen", "max_len_a", "max_len_b", "max_tokens", "batch_size"} <= set(compared)
    for key in compared:
        default = DEFAULT_MAX_TOKENS if key == "max_tokens" and cli[key] is None else cli[key]
        assert default == stage[key], f"{module} --{key.replace('_', '-')} vs config {DECODING_CLIS[module]}.{key}"


def test_experiment_name_is_one_plain_folder_name():
    """config experiment names results/<experiment>/: letters, digits, '.', '_', '-', not starting with a dot or dash."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert CONFIG["experiment"] == "default"
    for good in ("default", "alpha0.9", "seq_kd-beam3"):
        validator.validate(deep_merge(CONFIG, {"experiment": good}))
    for bad in ("", "../x", "a/b", ".hidden", "-x", "a b"):
        errors = list(validator.iter_errors(deep_merge(CONFIG, {"experiment": bad})))
        assert errors and errors[0].path[0] == "experiment", bad


def test_schema_allows_exactly_the_architecture_presets():
    """config teacher.preset / students.preset: the schema's names are pipeline.presets' (a new preset is usable)."""
    from pipeline.presets import PRESETS, preset_args

    assert set(SCHEMA["$defs"]["preset"]["enum"]) == set(PRESETS)
    deep8 = preset_args("student_deep8_shallow")
    assert deep8[deep8.index("--encoder-layers") + 1] == "8" and deep8[deep8.index("--decoder-layers") + 1] == "1"
