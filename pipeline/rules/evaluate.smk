# Evaluation stage: every model on every evaluation set (beam + greedy, BLEU/chrF, speed, size).
# Built-in sets are the data stage's dev/test; extra sets are a user's raw source and reference
# files (config evaluate.extra_sets), normalised and spm-encoded by the evaluation itself.
# evaluate.backends: fairseq is always evaluated (the report's figures); with ctranslate2 each model
# is also evaluated by CTranslate2 once per compute type of ct2.evaluate_compute_types: same JSON
# layout, plus backend and compute_type. Every evaluation JSON carries the model's spec.json (key
# "spec"). Teachers: an ensemble's members each, and the ensemble as one more entry (teacher_ensemble,
# fairseq only: CTranslate2 has no ensembles). Settings: config `evaluate:` (flags: EVAL_FLAGS,
# EVAL_CT2_FLAGS of common.smk); compute: resources.evaluate for both backends, so that the speeds
# compare. With evaluate.speedup_rounds, every student is also timed beside the teacher in one job per
# backend (rule speedup_vs_teacher).


def eval_set_inputs(evalset, builtin_src):
    """Source and reference of an evaluation set: builtin_src (the data stage's form of a built-in set that
    the backend reads) and the raw reference, or an extra set's raw files."""
    if evalset in EVAL_BUILTIN:
        return {"src": builtin_src, "ref": RAW.format(split=evalset, lang=TGT)}
    return {"src": EVAL_EXTRA[evalset]["src"], "ref": EVAL_EXTRA[evalset]["ref"]}


def eval_source_flags(builtin_flag):
    """The evaluation's source option: builtin_flag ("--split" or "--src-pieces", given the built-in set's
    name or input) for dev and test, raw text (normalised as the data stage does) for an extra set."""

    def source(wildcards, input):
        if wildcards.evalset in EVAL_BUILTIN:
            return builtin_flag(wildcards, input)
        return join(f"--src-text {shlex.quote(input.src)}", NORMALIZE_FLAG)

    return source


def evaluated_checkpoints(name):
    """The checkpoint(s) an evaluation decodes with: a model's, or every member's for the ensemble entry."""
    return TEACHER_MODELS if name == ENSEMBLE else [model_path(MODEL, name)]


def eval_inputs(wildcards):
    return {"model": evaluated_checkpoints(wildcards.model), "spec": model_path(MODEL_SPEC, wildcards.model),
            "spm": SPM_MODEL, "dicts": dict_files(BIN_DIR),
            **eval_set_inputs(wildcards.evalset, split_files(BIN_DIR, wildcards.evalset) if wildcards.evalset in EVAL_BUILTIN else None)}


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        json=EVAL_JSON,
        beam=EVAL_BEAM,
        greedy=EVAL_DIR + "/{evalset}.greedy.txt",
    wildcard_constraints:
        model="|".join([MODEL_PATTERN, *ENSEMBLE_EVALUATED]),
        evalset=EVAL_SET_PATTERN,
    params:
        source=eval_source_flags(lambda wildcards, input: f"--split {wildcards.evalset}"),
        decoding=EVAL_FLAGS,
        model=lambda wildcards: ":".join(evaluated_checkpoints(wildcards.model)),  # fairseq's ensemble syntax
    log:
        "logs/eval/" + EXPERIMENT + "/{model}.{evalset}.log",
    benchmark:
        "benchmarks/eval/" + EXPERIMENT + "/{model}.{evalset}.tsv"
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
        " {PY} -m pipeline.evaluate --model {params.model} --name {wildcards.model} --set {wildcards.evalset}"
        " {params.source} --ref {input.ref:q} --data {BIN_DIR} --spm {input.spm} --spec {input.spec}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --threads {threads} > {log} 2>&1"


def eval_ct2_inputs(wildcards):
    # built-in sets: the data stage's spm-encoded text, no binarised split needed
    return {"model": ct2_path(CT2_MODEL, wildcards.model), "spec": model_path(MODEL_SPEC, wildcards.model),
            **eval_set_inputs(wildcards.evalset, SPM_TEXT.format(split=wildcards.evalset, lang=SRC))}


# The evaluation of rule evaluate_model with CTranslate2 and one compute type: what quantisation
# costs (BLEU) and buys (speed) beside the fairseq figures.
rule evaluate_model_ct2:
    input:
        unpack(eval_ct2_inputs),
    output:
        json=EVAL_CT2_JSON,
        beam=EVAL_DIR + "/{evalset}.ct2-{compute_type}.beam.txt",
        greedy=EVAL_DIR + "/{evalset}.ct2-{compute_type}.greedy.txt",
    wildcard_constraints:
        model=MODEL_PATTERN,
        evalset=EVAL_SET_PATTERN,
        compute_type="|".join(CT2_COMPUTE_TYPES),
    params:
        source=eval_source_flags(lambda wildcards, input: f"--src-pieces {input.src}"),
        decoding=EVAL_CT2_FLAGS,
        ct2_dir=lambda wildcards: ct2_path(CT2_DIR, wildcards.model),
    log:
        "logs/eval/" + EXPERIMENT + "/{model}.{evalset}.ct2-{compute_type}.log",
    benchmark:
        "benchmarks/eval/" + EXPERIMENT + "/{model}.{evalset}.ct2-{compute_type}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
        gpu=res("evaluate")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.evaluate --backend ctranslate2 --ct2-model {params.ct2_dir}"
        " --name {wildcards.model} --set {wildcards.evalset} {params.source} --ref {input.ref:q} --spec {input.spec}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --compute-type {wildcards.compute_type} --threads {threads} > {log} 2>&1"


def speedup_inputs(wildcards):
    """The teacher and the student as the backend opens them: fairseq checkpoints with the dictionaries (--data), or
    CTranslate2 directories (their model.bin, self-contained), and report.set's spm-encoded source."""
    src = {"src": SPM_TEXT.format(split=wildcards.evalset, lang=SRC)}
    if wildcards.backend == "fairseq":
        return {"models": [model_path(MODEL, TEACHER), model_path(MODEL, wildcards.model)], "dicts": dict_files(BIN_DIR), **src}
    return {"models": [ct2_path(CT2_MODEL, TEACHER), ct2_path(CT2_MODEL, wildcards.model)], **src}


def speedup_flags(wildcards):
    """The pair and the backend's options, as the evaluation decodes (batches, threads, compute type, shortlist)."""
    names = f"--names {TEACHER} {wildcards.model}"
    if wildcards.backend == "fairseq":
        return join(f"--pair {model_path(MODEL, TEACHER)} {model_path(MODEL, wildcards.model)}", names,
                    f"--data {BIN_DIR}", batch_flags(EVAL_CFG))
    ctype = wildcards.backend.removeprefix("ct2-")
    return join(f"--pair {ct2_path(CT2_DIR, TEACHER)} {ct2_path(CT2_DIR, wildcards.model)}", names,
                f"--compute-type {ctype}", CT2_VMAP_FLAG, CT2_THREAD_FLAGS, ct2_batch_flags(EVAL_CFG))


# A student and its teacher timed in one job, passes alternating (pipeline.benchmarks.speedup), under one backend:
# the speed-up the report's side-by-side table gives. The evaluation times each model in its own job, and on a
# shared machine the same model's speed moves between jobs by more than the speed-ups that matter (docs/results.md).
rule speedup_vs_teacher:
    input:
        unpack(speedup_inputs),
    output:
        json=SPEEDUP_JSON,
    wildcard_constraints:
        model="|".join(re.escape(name) for name in SPEEDUP_STUDENTS) or "$^",
        evalset=EVAL_SET_PATTERN,
        backend="|".join(re.escape(backend) for backend in SPEEDUP_BACKENDS),
    params:
        pair=speedup_flags,
        search=search_flags(EVAL_CFG),
    log:
        "logs/eval/" + EXPERIMENT + "/{model}.{evalset}.speedup-{backend}.log",
    benchmark:
        "benchmarks/eval/" + EXPERIMENT + "/{model}.{evalset}.speedup-{backend}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
        gpu=res("evaluate")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.benchmarks.speedup {params.pair} --src {input.src} --set {wildcards.evalset}"
        " --rounds {SPEEDUP_ROUNDS} {params.search} --threads {threads} --json {output.json} > {log} 2>&1"


rule evaluate:
    input:
        eval_outputs([*MODELS, *ENSEMBLE_EVALUATED]),
        eval_ct2_outputs(MODELS),
        [ct2_path(CT2_SETTINGS, name) for name in MODELS] if EVAL_CT2 else [],
        speedup_outputs(STUDENTS),
