# Distillation stage (sequence-level KD): the teacher (an ensemble: all its members, fairseq backend;
# a CTranslate2 teacher: text to text) beam-decodes the cleaned training source in shards, one job
# each (a killed run redoes only the shards without a finished output); the shards are reassembled
# by sentence id, a target is selected and filtered per pair, and the distilled corpus is binarised
# with the teacher's dictionary next to the real dev and test sets.
# Settings: config `distill:` (decoding flags: DISTILL_FLAGS of common.smk); compute: resources.distill
# per shard job, resources.assemble, resources.binarize. Part of `all` only when a student trains on
# distilled targets (seq_kd, seq_word_kd).


def distill_assemble_args():
    cfg, filters = DISTILL_CFG, DISTILL_CFG["filters"]
    return " ".join(
        [
            f"--selection {cfg['selection']}",
            f"--metric {cfg['seq_inter_metric']}",
            f"--min-length-ratio {filters['min_length_ratio']}",
            f"--max-length-ratio {filters['max_length_ratio']}",
            f"--max-repeat {filters['max_repeat']}",
            f"--max-repeat-ngram {filters['max_repeat_ngram']}",
            f"--on-filtered {filters['on_filtered']}",
        ]
    )


from pipeline.decoding.ct2_dir import spm_models as ct2_spm_models


def decode_shard_inputs(wildcards):
    if CT2_TEACHER:  # text to text: the cleaned source as text; its output re-encoded with the students' spm
        return {"src": CLEAN_TEXT.format(lang=SRC), "ids": CLEAN_IDS, "ct2": str(CT2_TEACHER / "model.bin"),
                "teacher_spm": sorted({str(path) for path in ct2_spm_models(CT2_TEACHER)}), "out_spm": SPM_MODEL}
    return {"src": SPM_TEXT.format(split="train", lang=SRC), "ids": CLEAN_IDS,
            "model": TEACHER_MODELS,  # every member of an ensemble
            "dicts": dict_files(BIN_DIR), "ct2": [CT2_MODEL.format(model=TEACHER)] if DISTILL_CT2 else []}


def decode_shard_model(wildcards, input):
    if CT2_TEACHER:
        return f"--out-spm {input.out_spm}"
    return f"--model {TEACHER_PATHS} --data {BIN_DIR}"


rule distill_decode_shard:
    input:
        unpack(decode_shard_inputs),
    output:
        DISTILL_SHARD,
    wildcard_constraints:
        shard=rf"\d{{{DISTILL_ID_WIDTH}}}",
    params:
        args=DISTILL_FLAGS,
        model=decode_shard_model,
    log:
        "logs/distill/decode_shard{shard}.log",
    benchmark:
        "benchmarks/distill/decode_shard{shard}.tsv"
    threads: res("distill")["threads"]
    resources:
        mem_mb=res("distill")["mem_mb"],
        runtime=res("distill")["runtime"],
        gpu=res("distill")["gpus"],
    # pipeline.devices gives each concurrent shard its own GPU (Snakemake's gpu resource is only a
    # counter in local mode); without a GPU the shard decodes on the CPU.
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.distill.decode_shard {params.model}"
        " --source {input.src} --ids {input.ids} --shard {wildcards.shard} --num-shards {DISTILL_SHARDS}"
        " --threads {threads} {params.args} --out {output} > {log} 2>&1"


rule distill_assemble:
    input:
        shards=expand(DISTILL_SHARD, shard=DISTILL_SHARD_IDS),
        ids=CLEAN_IDS,
        src_spm=SPM_TEXT.format(split="train", lang=SRC),
        ref_spm=SPM_TEXT.format(split="train", lang=TGT),
        src_text=CLEAN_TEXT.format(lang=SRC),
        ref_text=CLEAN_TEXT.format(lang=TGT),
        spm_model=SPM_MODEL,
    output:
        src=DISTILL_TEXT.format(lang=SRC),
        tgt=DISTILL_TEXT.format(lang=TGT),
        ids=DISTILL_IDS,
        text_src=DISTILL_PLAIN.format(lang=SRC),
        text_tgt=DISTILL_PLAIN.format(lang=TGT),
        stats=report(DISTILL_STATS, category="Distillation", labels={"statistics": "distilled corpus"}),
    params:
        args=distill_assemble_args(),
    log:
        "logs/distill/assemble.log",
    benchmark:
        "benchmarks/distill/assemble.tsv"
    threads: res("assemble")["threads"]
    resources:
        mem_mb=res("assemble")["mem_mb"],
        runtime=res("assemble")["runtime"],
        gpu=res("assemble")["gpus"],
    shell:
        "{PY} -m pipeline.distill.assemble --shards {input.shards} --num-shards {DISTILL_SHARDS}"
        " --ids {input.ids} --src-spm {input.src_spm} --ref-spm {input.ref_spm}"
        " --src-text {input.src_text} --ref-text {input.ref_text} --spm-model {input.spm_model}"
        " --out-src {output.src} --out-tgt {output.tgt} --out-ids {output.ids}"
        " --text-src {output.text_src} --text-tgt {output.text_tgt} --stats {output.stats}"
        " {params.args} > {log} 2>&1"


rule distill_binarize:
    input:
        train=expand(DISTILL_TEXT, lang=LANGS),
        teacher_bin=bin_files(BIN_DIR),
    output:
        bin_files(DISTILL_BIN),
    log:
        "logs/distill/binarize.log",
    benchmark:
        "benchmarks/distill/binarize.tsv"
    threads: res("binarize")["threads"]
    resources:
        mem_mb=res("binarize")["mem_mb"],
        runtime=res("binarize")["runtime"],
        gpu=res("binarize")["gpus"],
    shell:
        "{PY} -m pipeline.distill.binarize --trainpref {DISTILL_TEXT_PREFIX} --src {SRC} --tgt {TGT}"
        " --teacher-bin {BIN_DIR} --destdir {DISTILL_BIN} --workers {threads} > {log} 2>&1"


rule distill:
    input:
        bin_files(DISTILL_BIN),
        DISTILL_STATS,
        expand(DISTILL_PLAIN, lang=LANGS),
