# Teacher stage (teacher.ensemble teachers differing in seed, or an existing teacher's checkpoints
# linked by rule import_teacher; none for a CTranslate2 teacher), and the one training rule every
# model goes through (the students stage, students.smk, asks it for the students): same resumable
# mechanics, different inputs. Each model has its keyed directory work/models/<name>-<key>
# (pipeline.settings); every training job writes TensorBoard logs there (tb/) and links them from
# results/<experiment>/tb/<name> when it starts. A model trained longer than before (train.max_update,
# max_epoch, ...: pipeline.settings.CONTINUATION_KEYS) gets a new directory that starts from the shorter
# run's checkpoints (pipeline.settings continue). Beside each model.pt: spec.json (its settings,
# pipeline.models.model_record), settings.json (what its key hashes) and a copy of the SentencePiece
# model, so `python -m pipeline.translate --model work/models/<dir>/model.pt` needs no other flag.
# Settings: config `train:`, `teacher:`, `students:`; compute: resources.train.

import json

from pipeline.launch import rule_resources, topology, train_args
from pipeline.models import fairseq_train_args

TRAIN_TOPOLOGY = topology(res("train"))  # nodes x tasks > 1: fairseq under srun, one process per task


def train_inputs(wildcards):
    spec = MODELS[MODEL_NAMES[wildcards.mdir]]
    data = train_data_dir(spec.name)
    # settings.json first: a new directory of a model trained longer continues the shorter run (pipeline.settings)
    inputs = {"dicts": dict_files(data), "train": split_files(data, "train", exts=("bin",)),
              "settings": model_path(MODEL_SETTINGS, spec.name)}
    if spec.uses_teacher:
        inputs["teacher"] = TEACHER_MODELS  # every member of an ensemble
    if kdcache_dir(spec.name):
        inputs["kdcache"] = kdcache_dir(spec.name) + "/cache.json"
    return inputs


def train_command(wildcards):
    spec = MODELS[MODEL_NAMES[wildcards.mdir]]
    t = spec.train
    wrapper = [
        f"--data {train_data_dir(spec.name)}",
        f"--save-dir {model_path(MODEL_DIR, spec.name)}/checkpoints",
        f"--output {model_path(MODEL, spec.name)}",
        f"--metrics {model_path(MODEL_METRICS, spec.name)}",
        f"--preset {spec.preset}",
        f"--best-metric {t['best_metric']} --average-last {t['average_last']}",
        "--fp16" if t["fp16"] else "",
        "--cpu-bf16" if t["cpu_bf16"] else "",
        *train_args(TRAIN_TOPOLOGY),  # nothing for one task
    ]
    fairseq = fairseq_train_args(spec, TEACHER_PATHS, STUDENTS_CFG["kd_topk"], kdcache_dir(spec.name))
    fairseq += ["--tensorboard-logdir", model_path(MODEL_TB, spec.name)]  # live curves (needs the tensorboard package)
    return " ".join(wrapper) + " -- " + " ".join(shlex.quote(a) for a in fairseq)


rule train_model:
    input:
        unpack(train_inputs),
    output:
        # The only declared output: the checkpoint directory beside it is never deleted by
        # Snakemake, so a killed job, rerun, resumes from checkpoint_last.pt.
        MODEL,
    wildcard_constraints:
        mdir=TRAINED_DIR_PATTERN,
    params:
        command=train_command,
        # A changed training setting retrains this model (and what depends on it).
        settings=lambda wildcards: repr(MODELS[MODEL_NAMES[wildcards.mdir]]),
    log:
        "logs/train/{mdir}.log",
    benchmark:
        "benchmarks/train/{mdir}.tsv"
    threads: res("train")["threads"]
    resources:
        **rule_resources(TRAIN_TOPOLOGY, lambda: getattr(workflow.executor_plugin, "name", None)),
        mem_mb=res("train")["mem_mb"],
        runtime=res("train")["runtime"],
    retries: 1
    shell:
        "export OMP_NUM_THREADS={threads}; "
        # the experiment's link to the logs (results/<experiment>/tb/<name>; <name>: the directory's name less
        # its key), made before training so that the curves show while it trains. Not a parameter: another
        # experiment that shares the model must not retrain it.
        "mdir={wildcards.mdir}; mkdir -p {RESULTS}/tb && ln -sfn ../../../work/models/$mdir/tb {RESULTS}/tb/${{mdir%-*}}; "
        "{PY} -m pipeline.settings continue work/models/{wildcards.mdir} >> {log} 2>&1; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} -- "
        "{PY} -m pipeline.train {params.command} >> {log} 2>&1"


# spec.json and spm.model: a rule of their own, so that writing them never retrains a model; a
# changed record (a new alpha, preset, seed, ...) rewrites spec.json, and the training rule retrains
# the model for the same change. Evaluation reads both.
rule model_files:
    input:
        spm=SPM_MODEL,
    output:
        spec=MODEL_SPEC,
        spm=MODEL_SPM,
    wildcard_constraints:
        mdir=RECORD_DIR_PATTERN,
    params:
        record=lambda wildcards: json.dumps(MODEL_RECORDS[MODEL_NAMES[wildcards.mdir]], indent=1),
    log:
        "logs/train/{mdir}.files.log",
    benchmark:
        "benchmarks/train/{mdir}.files.tsv"
    localrule: True  # a copy and a small file: no cluster job
    shell:
        "cp {input.spm} {output.spm} && printf '%s\\n' {params.record:q} > {output.spec} 2> {log}"


if IMPORTED:

    # An existing teacher (teacher.checkpoints) is linked, not trained: the evaluation, the distillation
    # and word-KD students read work/models/<member>-<key>/model.pt as they read a trained teacher's.
    rule import_teacher:
        input:
            lambda wildcards: IMPORTED[MODEL_NAMES[wildcards.mdir]],  # a newer checkpoint there relinks it (and reruns what follows)
        output:
            MODEL,
        wildcard_constraints:
            mdir=dir_pattern(IMPORTED, MODEL_DIRS),
        log:
            "logs/train/{mdir}.import.log",
        localrule: True
        shell:
            "ln -sfn {input:q} {output} 2> {log}"


rule teacher:
    input:
        model_targets(TEACHERS),
        [model_path(path, name) for name in ENSEMBLE_EVALUATED for path in (MODEL_SPEC, MODEL_SETTINGS)],
