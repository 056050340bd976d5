# Training: the teacher and every student through one rule (same resumable mechanics, different inputs).

from pipeline.launch import rule_resources, topology, train_args
from pipeline.models import TEACHER, fairseq_train_args, model_specs

MODELS = model_specs(config)
TRAIN_RES = config.get("resources", {}).get("train", {})
TRAIN_TOPOLOGY = topology(TRAIN_RES)  # nodes x tasks: pipeline/launch.py
TEACHER_MODEL = f"work/models/{TEACHER}/model.pt"


def train_data_dir(name):
    return "work/distill/bin" if MODELS[name].targets == "distilled" else BIN_DIR


def train_inputs(wildcards):
    spec = MODELS[wildcards.model]
    data = train_data_dir(spec.name)
    inputs = {"dicts": [f"{data}/dict.{lang}.txt" for lang in LANGS]}
    inputs["train"] = [f"{data}/train.{SRC}-{TGT}.{lang}.bin" for lang in LANGS]
    if spec.uses_teacher:
        inputs["teacher"] = TEACHER_MODEL
    return inputs


def train_command(wildcards):
    spec = MODELS[wildcards.model]
    t = spec.train
    wrapper = [
        f"--data {train_data_dir(spec.name)}",
        f"--save-dir work/models/{spec.name}/checkpoints",
        f"--output work/models/{spec.name}/model.pt",
        f"--metrics results/train/{spec.name}.jsonl",
        f"--preset {spec.preset} --tgt-lang {TGT}",
        f"--best-metric {t.get('best_metric', 'loss')} --average-last {t.get('average_last', 0)}",
        "--fp16" if t.get("fp16", True) else "",
    ]
    wrapper += train_args(TRAIN_TOPOLOGY)  # nothing for one task
    fairseq = fairseq_train_args(spec, TEACHER_MODEL, config.get("students", {}).get("kd_topk", 0))
    return " ".join(wrapper) + " -- " + " ".join(shlex.quote(a) for a in fairseq)


rule train_model:
    input:
        unpack(train_inputs),
    output:
        # The only declared output: the checkpoint directory beside it is never deleted by
        # Snakemake, so a killed job, rerun, resumes from checkpoint_last.pt.
        "work/models/{model}/model.pt",
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        command=train_command,
        # A changed training setting retrains this model (and what depends on it).
        settings=lambda wildcards: repr(MODELS[wildcards.model]),
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/train/{model}.tsv"
    threads: TRAIN_RES.get("threads", 2)
    resources:
        **rule_resources(TRAIN_TOPOLOGY, lambda: getattr(workflow.executor_plugin, "name", None)),
        mem_mb=TRAIN_RES.get("mem_mb", 8000),
        runtime=TRAIN_RES.get("runtime", 720),
    retries: 1
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} -- "
        "{PY} -m pipeline.train {params.command} >> {log} 2>&1"


rule teacher:
    input:
        TEACHER_MODEL,
