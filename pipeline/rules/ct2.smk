# CTranslate2 conversion: every model converted once (float32 weights, lossless; the compute type is
# chosen when a job loads it, for the device the job got). Used by the distillation (distill.backend),
# the evaluation (evaluate.backends) and the export; the flags of those jobs are built in common.smk.
# Each converted model has its keyed directory (CT2_DIR: work/ct2/<name>-<key>, {cdir} in the rules).
# Settings: config `ct2:`; compute: resources.convert.


# The vocabulary shortlist (ct2.vmap.enabled): from the reference training corpus, so the teacher's
# distillation can use it too.
rule ct2_vmap:
    input:
        src=SPM_TEXT.format(split="train", lang=SRC),
        tgt=SPM_TEXT.format(split="train", lang=TGT),
    output:
        VMAP,
    params:
        frequent=CT2_CFG["vmap"]["frequent"],
        per_source=CT2_CFG["vmap"]["per_source"],
    log:
        "logs/ct2/" + DATA_RUN + "/" + os.path.basename(VMAP) + ".log",
    benchmark:
        "benchmarks/ct2/" + DATA_RUN + "/" + os.path.basename(VMAP) + ".tsv"
    threads: res("convert")["threads"]
    resources:
        mem_mb=res("convert")["mem_mb"],
        runtime=res("convert")["runtime"],
        gpu=res("convert")["gpus"],
    shell:
        "{PY} -m pipeline.vmap --src {input.src} --tgt {input.tgt} --out {output}"
        " --frequent {params.frequent} --per-source {params.per_source} > {log} 2>&1"


rule ct2_convert:
    input:
        unpack(lambda wildcards: {"vmap": CT2_VMAP} if CT2_VMAP else {}),
        model=lambda wildcards: model_path(MODEL, CT2_NAMES[wildcards.cdir]),
        spm=SPM_MODEL,
        dicts=dict_files(BIN_DIR),
    output:
        CT2_MODEL,
    wildcard_constraints:
        cdir=dir_pattern(CT2_DIRS, CT2_DIRS),
    params:
        out=lambda wildcards: CT2_DIR.format(cdir=wildcards.cdir),
        flags=join("--quantization float32", NORMALIZE_FLAG, CT2_VMAP_FILE_FLAG),
    log:
        "logs/ct2/convert.{cdir}.log",
    benchmark:
        "benchmarks/ct2/convert.{cdir}.tsv"
    threads: res("convert")["threads"]
    resources:
        mem_mb=res("convert")["mem_mb"],
        runtime=res("convert")["runtime"],
        gpu=res("convert")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.ct2 convert --model {input.model} --data {BIN_DIR} --spm {input.spm}"
        " --out {params.out} {params.flags} > {log} 2>&1"
