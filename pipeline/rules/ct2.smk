# CTranslate2: every model converted once (float32 weights, lossless; the compute type is chosen
# when a job loads it, for the device the job got), used by the evaluation (evaluate.backends) and
# the distillation shards (distill.backend); and `snakemake export`: per chosen model a self-contained
# int8 directory with its SentencePiece model and a README with its BLEU and speed.
# Settings: config `ct2:`; include after train.smk (MODELS, TEACHER) and evaluate.smk (EVAL_*).

import re

from pipeline.ct2 import COMPUTE_TYPES as CT2_COMPUTE_TYPES

CT2_CFG = config.get("ct2", {}) or {}
CT2_EXPORT = CT2_CFG.get("export", {}) or {}
CT2_MODEL = "work/ct2/{model}/model.bin"  # the directory beside it also holds spm.model and pipeline.json
CT2_EXPORT_MODELS = CT2_EXPORT.get("models") or [name for name in MODELS if name != TEACHER]
for _name in CT2_EXPORT_MODELS:
    if _name not in MODELS:
        raise ValueError(f"config ct2.export.models: unknown model '{_name}' (models: {', '.join(MODELS)})")
CT2_EXPORT_RES = config.get("resources", {}).get("export", {})
CT2_NORMALIZE = "" if config["data"].get("normalize_punctuation", True) else " --no-normalize"
CT2_VMAP_CFG = CT2_CFG.get("vmap", {}) or {}
CT2_VMAP = "work/ct2/vmap.txt" if CT2_VMAP_CFG.get("enabled") else None
CT2_VMAP_FILE_ARG = f" --vmap {CT2_VMAP}" if CT2_VMAP else ""  # the conversion's and the export's option


def ct2_compute_type_arg():
    """--compute-type for the stage CLIs: one type per device (the job's device is known only when it runs)."""
    table = CT2_CFG.get("compute_type") or {}
    return "--compute-type " + ",".join(f"{device}={table.get(device, 'auto')}" for device in ("cpu", "cuda"))


def ct2_decoding_args(max_tokens=None, batch_size=None, compute_type=True, vmap=True):
    """Compute type, thread split, batch size (ct2.max_tokens / batch_size over the stage's own) and shortlist for a CTranslate2 job."""
    args = [ct2_compute_type_arg()] if compute_type else []
    if vmap and CT2_VMAP:
        args.append("--vmap")
    for key in ("inter_threads", "intra_threads"):
        if CT2_CFG.get(key):
            args.append(f"--{key.replace('_', '-')} {CT2_CFG[key]}")
    max_tokens = CT2_CFG.get("max_tokens") or max_tokens
    batch_size = CT2_CFG.get("batch_size") or batch_size
    if max_tokens:
        args.append(f"--max-tokens {max_tokens}")
    if batch_size:
        args.append(f"--batch-size {batch_size}")
    return " ".join(args)


# The vocabulary shortlist (ct2.vmap.enabled): from the reference training corpus, so the teacher's
# distillation can use it too.
rule ct2_vmap:
    input:
        src=f"work/data/spm/train.{SRC}",
        tgt=f"work/data/spm/train.{TGT}",
    output:
        "work/ct2/vmap.txt",
    params:
        frequent=CT2_VMAP_CFG.get("frequent", 50),
        per_source=CT2_VMAP_CFG.get("per_source", 10),
    log:
        "logs/ct2/vmap.log",
    benchmark:
        "benchmarks/ct2/vmap.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        "{PY} -m pipeline.vmap --src {input.src} --tgt {input.tgt} --out {output}"
        " --frequent {params.frequent} --per-source {params.per_source} > {log} 2>&1"


rule ct2_convert:
    input:
        unpack(lambda wildcards: {"vmap": CT2_VMAP} if CT2_VMAP else {}),
        model="work/models/{model}/model.pt",
        spm="work/data/spm/spm.model",
        dicts=[f"{BIN_DIR}/dict.{lang}.txt" for lang in LANGS],
    output:
        CT2_MODEL,
    wildcard_constraints:
        model="|".join(re.escape(name) for name in MODELS),
    log:
        "logs/ct2/convert.{model}.log",
    benchmark:
        "benchmarks/ct2/convert.{model}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.ct2 convert --model {input.model} --data {BIN_DIR} --spm {input.spm}"
        " --out work/ct2/{wildcards.model} --quantization float32{CT2_NORMALIZE}"
        + CT2_VMAP_FILE_ARG + " > {log} 2>&1"


def eval_ct2_inputs(wildcards):
    inputs = {"model": CT2_MODEL.format(model=wildcards.model)}
    if wildcards.evalset in EVAL_BUILTIN:  # the data stage's spm-encoded text: no binarised split needed
        inputs["src"] = f"work/data/spm/{wildcards.evalset}.{SRC}"
        inputs["ref"] = f"work/data/raw/{wildcards.evalset}.{TGT}"
    else:
        inputs["src"] = EVAL_EXTRA[wildcards.evalset]["src"]
        inputs["ref"] = EVAL_EXTRA[wildcards.evalset]["ref"]
    return inputs


def eval_ct2_source_args(wildcards, input):
    if wildcards.evalset in EVAL_BUILTIN:
        return f"--src-pieces {input.src}"
    return f"--src-text {shlex.quote(input.src)}{CT2_NORMALIZE}"


def eval_ct2_decoding_args(compute_type=True, vmap=True):
    """The evaluation's search settings (config evaluate) with CTranslate2's batch, thread and shortlist settings."""
    return " ".join(
        [
            f"--beam {EVAL_CFG.get('beam', 5)} --lenpen {EVAL_CFG.get('lenpen', 1.0)}",
            f"--max-len-a {EVAL_CFG.get('max_len_a', 1.2)} --max-len-b {EVAL_CFG.get('max_len_b', 10)}",
            ct2_decoding_args(EVAL_CFG.get("max_tokens", 6000), EVAL_CFG.get("batch_size"), compute_type, vmap),
            f"--speed-runs {EVAL_CFG.get('speed_runs', 3)}",
        ]
    )


# The evaluation of rule evaluate_model with CTranslate2 and one compute type: what quantisation
# costs (BLEU) and buys (speed) beside the fairseq figures (evaluate.backends, eval_ct2_outputs).
rule evaluate_model_ct2:
    input:
        unpack(eval_ct2_inputs),
    output:
        json="results/eval/{model}/{evalset}.ct2-{compute_type}.json",
        beam="results/eval/{model}/{evalset}.ct2-{compute_type}.beam.txt",
        greedy="results/eval/{model}/{evalset}.ct2-{compute_type}.greedy.txt",
    wildcard_constraints:
        model="|".join(re.escape(name) for name in MODELS),
        evalset="|".join(re.escape(name) for name in EVAL_SETS),
        compute_type="|".join(CT2_COMPUTE_TYPES),
    params:
        source=eval_ct2_source_args,
        decoding=eval_ct2_decoding_args(compute_type=False),
    log:
        "logs/eval/{model}.{evalset}.ct2-{compute_type}.log",
    benchmark:
        "benchmarks/eval/{model}.{evalset}.ct2-{compute_type}.tsv"
    threads: EVAL_RES.get("threads", 2)
    resources:
        mem_mb=EVAL_RES.get("mem_mb", 4000),
        runtime=EVAL_RES.get("runtime", 60),
        gpu=EVAL_RES.get("gpus", 0),
    # same devices as the fairseq evaluation (resources.evaluate), so the speeds compare
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.evaluate --backend ctranslate2 --ct2-model work/ct2/{wildcards.model}"
        " --name {wildcards.model} --set {wildcards.evalset} {params.source} --ref {input.ref:q}"
        " --json {output.json} --beam-hyps {output.beam} --greedy-hyps {output.greedy}"
        " {params.decoding} --compute-type {wildcards.compute_type} --threads {threads} > {log} 2>&1"


def export_inputs(wildcards):
    inputs = {
        "model": f"work/models/{wildcards.model}/model.pt",
        "spm": "work/data/spm/spm.model",
        "dicts": [f"{BIN_DIR}/dict.{lang}.txt" for lang in LANGS],
        "src": f"work/data/spm/test.{SRC}",
        "ref": f"work/data/raw/test.{TGT}",
    }
    if "test" in EVAL_SETS:  # the checkpoint's own (fairseq) figures, for the README's comparison
        inputs["fairseq_eval"] = f"results/eval/{wildcards.model}/test.json"
    if CT2_VMAP:
        inputs["vmap"] = CT2_VMAP
    return inputs


rule export_model:
    input:
        unpack(export_inputs),
    output:
        directory("export/{model}"),
    wildcard_constraints:
        model="|".join(re.escape(name) for name in MODELS),
    params:
        decoding=eval_ct2_decoding_args(vmap=False) + CT2_VMAP_FILE_ARG,
        fairseq_eval=lambda wildcards, input: f"--fairseq-eval {input.fairseq_eval}" if "fairseq_eval" in input.keys() else "",
        quantization=CT2_EXPORT.get("quantization", "int8"),
        compute_types=" ".join(CT2_EXPORT.get("compute_types", ["auto", "float32"])),
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    threads: CT2_EXPORT_RES.get("threads", 2)
    resources:
        mem_mb=CT2_EXPORT_RES.get("mem_mb", 4000),
        runtime=CT2_EXPORT_RES.get("runtime", 60),
        # 0: the README's speeds are the CPU's, where a small student is usually deployed
        gpu=CT2_EXPORT_RES.get("gpus", 0),
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.export --model {input.model} --name {wildcards.model} --out {output}"
        " --data {BIN_DIR} --spm {input.spm} --src-pieces {input.src} --ref {input.ref:q} --set test"
        " {params.fairseq_eval} --quantization {params.quantization}"
        " --compute-types {params.compute_types} {params.decoding} --threads {threads}{CT2_NORMALIZE} > {log} 2>&1"


rule export:
    input:
        [f"export/{name}" for name in CT2_EXPORT_MODELS],
