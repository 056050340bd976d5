# Evaluation stage: every model on every evaluation set (beam + greedy, BLEU/chrF, speed, size).
# Built-in sets are the data stage's binarised dev/test; extra sets are a user's raw source and
# reference files (config evaluate.extra_sets), normalised and spm-encoded by the evaluation itself.

import re
import shlex

EVAL_CFG = config.get("evaluate", {})
EVAL_RES = config.get("resources", {}).get("evaluate", {})
EVAL_BUILTIN = {"dev", "test"}
EVAL_EXTRA = EVAL_CFG.get("extra_sets", {}) or {}
EVAL_SETS = list(EVAL_CFG.get("sets", ["dev", "test"])) + [name for name in EVAL_EXTRA if name not in EVAL_BUILTIN]
for _name in EVAL_SETS:
    if _name not in EVAL_BUILTIN and _name not in EVAL_EXTRA:
        raise ValueError(f"config evaluate.sets: unknown set '{_name}' (built-in: dev, test; or define it in extra_sets)")


def eval_outputs(models, sets=None):
    """The evaluation JSON of each model on each set (default: every configured set)."""
    return [f"results/eval/{model}/{name}.json" for model in models for name in (sets or EVAL_SETS)]


# evaluate.backends: fairseq is always evaluated (the report's figures); with ctranslate2 each model
# is also evaluated by CTranslate2 once per compute type of ct2.evaluate_compute_types (rule
# evaluate_model_ct2 of pipeline/rules/ct2.smk): same JSON layout, plus backend and compute_type.
EVAL_BACKENDS = EVAL_CFG.get("backends") or ["fairseq"]
EVAL_CT2_TYPES = (config.get("ct2") or {}).get("evaluate_compute_types") or ["float32", "int8"]


def eval_ct2_outputs(models, sets=None):
    """CTranslate2's evaluation JSON per model, set and compute type; none unless evaluate.backends has ctranslate2."""
    if "ctranslate2" not in EVAL_BACKENDS:
        return []
    return [
        f"results/eval/{model}/{name}.ct2-{ctype}.json"
        for model in models
        for name in (sets or EVAL_SETS)
        for ctype in EVAL_CT2_TYPES
    ]


def eval_inputs(wildcards):
    inputs = {
        "model": f"work/models/{wildcards.model}/model.pt",
        "spm": "work/data/spm/spm.model",
        "dicts": expand(f"{BIN_DIR}/dict.{{lang}}.txt", lang=LANGS),
    }
    if wildcards.evalset in EVAL_BUILTIN:
        split = FAIRSEQ_SPLIT[wildcards.evalset]
        inputs["src"] = [f"{BIN_DIR}/{split}.{SRC}-{TGT}.{lang}.{ext}" for lang in LANGS for ext in ("bin", "idx")]
        inputs["ref"] = f"work/data/raw/{wildcards.evalset}.{TGT}"
    else:
        inputs["src"] = EVAL_EXTRA[wildcards.evalset]["src"]
        inputs["ref"] = EVAL_EXTRA[wildcards.evalset]["ref"]
    return inputs


def eval_source_args(wildcards, input):
    if wildcards.evalset in EVAL_BUILTIN:
        return f"--split {wildcards.evalset}"
    norm = "" if config["data"].get("normalize_punctuation", True) else " --no-normalize"
    return f"--src-text {shlex.quote(input.src)}{norm}"


def eval_decoding_args():
    args = [
        f"--beam {EVAL_CFG.get('beam', 5)}",
        f"--lenpen {EVAL_CFG.get('lenpen', 1.0)}",
        f"--max-len-a {EVAL_CFG.get('max_len_a', 1.2)}",
        f"--max-len-b {EVAL_CFG.get('max_len_b', 10)}",
    ]
    if EVAL_CFG.get("max_tokens", 6000):
        args.append(f"--max-tokens {EVAL_CFG.get('max_tokens', 6000)}")
    if EVAL_CFG.get("batch_size"):
        args.append(f"--batch-size {EVAL_CFG['batch_size']}")
    if EVAL_CFG.get("fp16", False):
        args.append("--fp16")
    args.append(f"--speed-runs {EVAL_CFG.get('speed_runs', 3)}")
    return " ".join(args)


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        json="results/eval/{model}/{evalset}.json",
        beam="results/eval/{model}/{evalset}.beam.txt",
        greedy="results/eval/{model}/{evalset}.greedy.txt",
    wildcard_constraints:
        model=r"[^/]+",
        evalset="|".join(re.escape(name) for name in EVAL_SETS),
    params:
        source=eval_source_args,
        decoding=eval_decoding_args(),
    log:
        "logs/eval/{model}.{evalset}.log",
    benchmark:
        "benchmarks/eval/{model}.{evalset}.tsv"
    threads: EVAL_RES.get("threads", 2)
    resources:
        mem_mb=EVAL_RES.get("mem_mb", 4000),
        runtime=EVAL_RES.get("runtime", 60),
        gpu=EVAL_RES.get("gpus", 0),
    # pipeline.devices gives the job its own GPU, or hides every GPU with --gpus 0 (then it decodes
    # on the CPU): speeds of different models are comparable only on the same kind of device.
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.evaluate --model {input.model} --name {wildcards.model} --set {wildcards.evalset}"
        " {params.source} --ref {input.ref:q} --data {BIN_DIR} --spm {input.spm}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        eval_outputs(list(MODELS)),
        eval_ct2_outputs(list(MODELS)),
