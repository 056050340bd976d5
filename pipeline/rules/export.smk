# `snakemake export`: per chosen model (ct2.export.models; default every student) a self-contained
# CTranslate2 directory export/<experiment>/{model} (weights as ct2.export.quantization, its SentencePiece model,
# and a README with its BLEU and speed on the test set, beside the checkpoint's own fairseq figures
# when the test set is evaluated). Settings: config `ct2.export`, decoding: EXPORT_FLAGS of
# common.smk; compute: resources.export (gpus 0 by default: the README's speeds are the CPU's, where a
# small student is usually deployed).


def export_inputs(wildcards):
    inputs = {
        "model": model_path(MODEL, wildcards.model),
        "spec": model_path(MODEL_SPEC, wildcards.model),
        "spm": SPM_MODEL,
        "dicts": dict_files(BIN_DIR),
        "src": SPM_TEXT.format(split="test", lang=SRC),
        "ref": RAW.format(split="test", lang=TGT),
    }
    if "test" in EVAL_SETS:  # the checkpoint's own (fairseq) figures, for the README's comparison
        inputs["fairseq_eval"] = EVAL_JSON.format(model=wildcards.model, evalset="test")
    if CT2_VMAP:
        inputs["vmap"] = CT2_VMAP
    return inputs


rule export_model:
    input:
        unpack(export_inputs),
    output:
        directory(EXPORT_DIR),
    wildcard_constraints:
        model=MODEL_PATTERN,
    params:
        decoding=EXPORT_FLAGS,
        fairseq_eval=lambda wildcards, input: f"--fairseq-eval {input.fairseq_eval}" if "fairseq_eval" in input.keys() else "",
        quantization=CT2_CFG["export"]["quantization"],
        compute_types=" ".join(CT2_CFG["export"]["compute_types"]),
        normalize=" " + NORMALIZE_FLAG if NORMALIZE_FLAG else "",
    log:
        "logs/export/" + EXPERIMENT + "/{model}.log",
    benchmark:
        "benchmarks/export/" + EXPERIMENT + "/{model}.tsv"
    threads: res("export")["threads"]
    resources:
        mem_mb=res("export")["mem_mb"],
        runtime=res("export")["runtime"],
        gpu=res("export")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.export --model {input.model} --name {wildcards.model} --out {output}"
        " --data {BIN_DIR} --spm {input.spm} --src-pieces {input.src} --ref {input.ref:q} --set test"
        " --spec {input.spec} {params.fairseq_eval} --quantization {params.quantization}"
        " --compute-types {params.compute_types} {params.decoding} --threads {threads}{params.normalize} > {log} 2>&1"


rule export:
    input:
        [EXPORT_DIR.format(model=name) for name in EXPORT_MODELS],
