# Evaluation stage: every model on every evaluation set (beam + greedy, BLEU/chrF, speed, size).
# Built-in sets are the data stage's dev/test; extra sets are a user's raw source and reference
# files (config evaluate.extra_sets), normalised and spm-encoded by the evaluation itself.
# evaluate.backends: fairseq is always evaluated (the report's figures); with ctranslate2 each model
# is also evaluated by CTranslate2 once per compute type of ct2.evaluate_compute_types: same JSON
# layout, plus backend and compute_type. Every evaluation JSON carries the model's spec.json (key
# "spec"). Settings: config `evaluate:` (flags: EVAL_FLAGS, EVAL_CT2_FLAGS of common.smk);
# compute: resources.evaluate for both backends, so that the speeds compare.


def eval_inputs(wildcards):
    inputs = {"model": MODEL.format(model=wildcards.model), "spec": MODEL_SPEC.format(model=wildcards.model),
              "spm": SPM_MODEL, "dicts": dict_files(BIN_DIR)}
    if wildcards.evalset in EVAL_BUILTIN:
        inputs["src"] = split_files(BIN_DIR, wildcards.evalset)
        inputs["ref"] = RAW.format(split=wildcards.evalset, lang=TGT)
    else:
        inputs["src"] = EVAL_EXTRA[wildcards.evalset]["src"]
        inputs["ref"] = EVAL_EXTRA[wildcards.evalset]["ref"]
    return inputs


def eval_source_args(wildcards, input):
    if wildcards.evalset in EVAL_BUILTIN:
        return f"--split {wildcards.evalset}"
    return join(f"--src-text {shlex.quote(input.src)}", NORMALIZE_FLAG)


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        json=EVAL_JSON,
        beam="results/eval/{model}/{evalset}.beam.txt",
        greedy="results/eval/{model}/{evalset}.greedy.txt",
    wildcard_constraints:
        model=MODEL_PATTERN,
        evalset=EVAL_SET_PATTERN,
    params:
        source=eval_source_args,
        decoding=EVAL_FLAGS,
    log:
        "logs/eval/{model}.{evalset}.log",
    benchmark:
        "benchmarks/eval/{model}.{evalset}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
        gpu=res("evaluate")["gpus"],
    # pipeline.devices gives the job its own GPU, or hides every GPU with --gpus 0 (then it decodes
    # on the CPU): speeds of different models are comparable only on the same kind of device.
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.evaluate --model {input.model} --name {wildcards.model} --set {wildcards.evalset}"
        " {params.source} --ref {input.ref:q} --data {BIN_DIR} --spm {input.spm} --spec {input.spec}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --threads {threads} > {log} 2>&1"


def eval_ct2_inputs(wildcards):
    inputs = {"model": CT2_MODEL.format(model=wildcards.model)}
    if wildcards.evalset in EVAL_BUILTIN:  # the data stage's spm-encoded text: no binarised split needed
        inputs["src"] = SPM_TEXT.format(split=wildcards.evalset, lang=SRC)
        inputs["ref"] = RAW.format(split=wildcards.evalset, lang=TGT)
    else:
        inputs["src"] = EVAL_EXTRA[wildcards.evalset]["src"]
        inputs["ref"] = EVAL_EXTRA[wildcards.evalset]["ref"]
    return inputs


def eval_ct2_source_args(wildcards, input):
    if wildcards.evalset in EVAL_BUILTIN:
        return f"--src-pieces {input.src}"
    return join(f"--src-text {shlex.quote(input.src)}", NORMALIZE_FLAG)


# The evaluation of rule evaluate_model with CTranslate2 and one compute type: what quantisation
# costs (BLEU) and buys (speed) beside the fairseq figures.
rule evaluate_model_ct2:
    input:
        unpack(eval_ct2_inputs),
    output:
        json=EVAL_CT2_JSON,
        beam="results/eval/{model}/{evalset}.ct2-{compute_type}.beam.txt",
        greedy="results/eval/{model}/{evalset}.ct2-{compute_type}.greedy.txt",
    wildcard_constraints:
        model=MODEL_PATTERN,
        evalset=EVAL_SET_PATTERN,
        compute_type="|".join(CT2_COMPUTE_TYPES),
    params:
        source=eval_ct2_source_args,
        decoding=EVAL_CT2_FLAGS,
        ct2_dir=lambda wildcards: CT2_DIR.format(model=wildcards.model),
    log:
        "logs/eval/{model}.{evalset}.ct2-{compute_type}.log",
    benchmark:
        "benchmarks/eval/{model}.{evalset}.ct2-{compute_type}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
        gpu=res("evaluate")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.evaluate --backend ctranslate2 --ct2-model {params.ct2_dir}"
        " --name {wildcards.model} --set {wildcards.evalset} {params.source} --ref {input.ref:q}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --compute-type {wildcards.compute_type} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        eval_outputs(MODELS),
        eval_ct2_outputs(MODELS),
