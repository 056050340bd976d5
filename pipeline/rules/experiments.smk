# Experiments (config `experiment`; pipeline.settings): every stage writes into a directory keyed by
# the settings that made it, and records them there (settings.json, rule stage_settings); an
# experiment's own files are results/<experiment>/: evaluations, the report, a copy of each trained
# model's progress records and a link to its TensorBoard logs (rule training_record), so that
# `tensorboard --logdir results/<experiment>/tb` shows every model of the experiment, also the ones
# it shares with an earlier experiment. `snakemake compare` puts the summaries of every experiment
# under results/ into one table (results/compare.csv, .md; pipeline.compare).

import glob


# settings.json beside a keyed stage's outputs: written by a job (a dry run writes nothing), rewritten
# only if what it records changes.
rule stage_settings:
    output:
        "{path}/settings.json",
    wildcard_constraints:
        path="|".join(re.escape(path.rsplit("/", 1)[0]) for path in SETTINGS_RECORDS),
    params:
        record=lambda wildcards: SETTINGS_RECORDS[f"{wildcards.path}/settings.json"],
    localrule: True
    shell:
        "printf '%s\\n' {params.record:q} > {output}"


def tb_link_target(name):
    """The link results/<experiment>/tb/<name> -> the model's TensorBoard logs, relative to the link's folder."""
    return "../../../" + model_path(MODEL_TB, name)


# The experiment's view of a trained model (its own, or one an earlier experiment trained with the same
# settings): its progress records (the report's training curves) and its TensorBoard logs. Training
# itself links the logs when it starts (rule train_model), so that curves show while it trains.
rule training_record:
    input:
        model=lambda wildcards: model_path(MODEL, wildcards.model),
    output:
        TRAIN_METRICS,
    wildcard_constraints:
        model="|".join(re.escape(name) for name in TRAINED) or "(?!)",
    params:
        metrics=lambda wildcards: model_path(MODEL_METRICS, wildcards.model),
        tb_link=lambda wildcards: TB_LINK.format(model=wildcards.model),
        tb_target=lambda wildcards: tb_link_target(wildcards.model),
    localrule: True
    shell:
        "cp {params.metrics} {output} && mkdir -p $(dirname {params.tb_link})"
        " && ln -sfn {params.tb_target} {params.tb_link}"


COMPARE_CSV = "results/compare.csv"
COMPARE_MD = "results/compare.md"


def compare_summaries(wildcards):
    """This experiment's summary and every other experiment's under results/ (sorted by experiment)."""
    found = set(glob.glob("results/*/summary.csv")) | {SUMMARY_CSV}
    return sorted(found)


rule compare:
    input:
        compare_summaries,
    output:
        csv=COMPARE_CSV,
        md=COMPARE_MD,
    log:
        "logs/report/compare.log",
    localrule: True
    shell:
        "{PY} -m pipeline.compare --summaries {input} --csv {output.csv} --md {output.md} > {log} 2>&1"
