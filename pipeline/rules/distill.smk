# Distillation stage (sequence-level KD). The checkpoint distill_shard_index splits the cleaned
# training corpus into ceil(lines / distill.shard_size) shards (byte offsets in the data stage's
# distill_index-<shard_size>.json, no copies of the corpus); the teacher (an ensemble: all its members, fairseq backend; a CTranslate2
# teacher: text to text) beam-decodes each shard in its own job, reading only its range (a killed run
# redoes only the shards without a finished output); each shard is post-processed in its own job
# (target selection, filters, statistics as sums); the merge concatenates the shards' outputs in id
# order, checks every id and adds the statistics exactly (with the fallback-share check:
# distill.max_fallback_share warns, distill.fail_fallback_share fails); the distilled corpus is
# binarised with the teacher's dictionary next to the real dev and test sets. Everything but the index
# lives in the distillation's keyed directory (DISTILL_DIR: work/distill/<selection>_beam<N>-<key>).
# Settings: config `distill:` (decoding flags: DISTILL_FLAGS of common.smk); compute: resources.distill
# per decoding job, resources.distill_post per shard, resources.distill_merge, resources.binarize.
# Part of `all` only when a student trains on distilled targets (seq_kd, seq_word_kd). Until the index
# exists (after the data stage), a dry run shows the jobs up to distill_shard_index only.


def distill_postprocess_args():
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


checkpoint distill_shard_index:
    input:
        ids=CLEAN_IDS,
        src_spm=SPM_TEXT.format(split="train", lang=SRC),
        ref_spm=SPM_TEXT.format(split="train", lang=TGT),
        src_text=CLEAN_TEXT.format(lang=SRC),
        ref_text=CLEAN_TEXT.format(lang=TGT),
    output:
        DISTILL_INDEX,
    params:
        shard_size=DISTILL_CFG["shard_size"],
    log:
        "logs/data/" + DATA_RUN + f"/distill_index-{DISTILL_CFG['shard_size']}.log",  # beside its output: the data's
    benchmark:
        "benchmarks/data/" + DATA_RUN + f"/distill_index-{DISTILL_CFG['shard_size']}.tsv"
    threads: 1
    resources:
        mem_mb=res("distill_merge")["mem_mb"],
        runtime=res("distill_merge")["runtime"],
        gpu=0,
    shell:
        "{PY} -m pipeline.distill.shard_index --shard-size {params.shard_size} --ids {input.ids}"
        " --src-spm {input.src_spm} --ref-spm {input.ref_spm} --src-text {input.src_text} --ref-text {input.ref_text}"
        " --out {output} > {log} 2>&1"


from pipeline.decoding.ct2_dir import spm_models as ct2_spm_models


def decode_shard_inputs(wildcards):
    if CT2_TEACHER:  # text to text: the shard's cleaned text; its output re-encoded with the students' spm
        return {"index": DISTILL_INDEX, "ct2": str(CT2_TEACHER / "model.bin"),
                "teacher_spm": sorted({str(path) for path in ct2_spm_models(CT2_TEACHER)}), "out_spm": SPM_MODEL}
    return {"index": DISTILL_INDEX,
            "model": TEACHER_MODELS,  # every member of an ensemble
            "dicts": dict_files(BIN_DIR), "ct2": [ct2_path(CT2_MODEL, TEACHER)] if DISTILL_CT2 else []}


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
        **DISTILL_SHARD_CONSTRAINTS,
    params:
        args=DISTILL_FLAGS,
        model=decode_shard_model,
    log:
        "logs/distill/" + DISTILL_RUN + "/decode_shard{shard}-of-{nshards}.log",
    benchmark:
        "benchmarks/distill/" + DISTILL_RUN + "/decode_shard{shard}-of-{nshards}.tsv"
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
        " --index {input.index} --shard {wildcards.shard} --num-shards {wildcards.nshards}"
        " --threads {threads} {params.args} --out {output} > {log} 2>&1"


rule distill_postprocess:
    input:
        shard=DISTILL_SHARD,
        index=DISTILL_INDEX,
        spm_model=SPM_MODEL,
    output:
        directory(DISTILL_PART),
    wildcard_constraints:
        **DISTILL_SHARD_CONSTRAINTS,
    params:
        args=distill_postprocess_args(),
    log:
        "logs/distill/" + DISTILL_RUN + "/postprocess{shard}-of-{nshards}.log",
    benchmark:
        "benchmarks/distill/" + DISTILL_RUN + "/postprocess{shard}-of-{nshards}.tsv"
    threads: res("distill_post")["threads"]
    resources:
        mem_mb=res("distill_post")["mem_mb"],
        runtime=res("distill_post")["runtime"],
        gpu=res("distill_post")["gpus"],
    shell:
        "{PY} -m pipeline.distill.postprocess --shard {input.shard} --shard-id {wildcards.shard}"
        " --num-shards {wildcards.nshards} --index {input.index} --spm-model {input.spm_model}"
        " --out-dir {output} {params.args} > {log} 2>&1"


rule distill_merge:
    input:
        parts=distill_parts,
        index=DISTILL_INDEX,
    output:
        src=DISTILL_TEXT.format(lang=SRC),
        tgt=DISTILL_TEXT.format(lang=TGT),
        ids=DISTILL_IDS,
        text_src=DISTILL_PLAIN.format(lang=SRC),
        text_tgt=DISTILL_PLAIN.format(lang=TGT),
        stats=report(DISTILL_STATS, category="Distillation", labels={"statistics": "distilled corpus"}),
    params:
        fallback=f"--max-fallback-share {DISTILL_CFG['max_fallback_share']}"
        f" --fail-fallback-share {DISTILL_CFG['fail_fallback_share']}",
    log:
        "logs/distill/" + DISTILL_RUN + "/merge.log",
    benchmark:
        "benchmarks/distill/" + DISTILL_RUN + "/merge.tsv"
    threads: res("distill_merge")["threads"]
    resources:
        mem_mb=res("distill_merge")["mem_mb"],
        runtime=res("distill_merge")["runtime"],
        gpu=res("distill_merge")["gpus"],
    shell:
        "{PY} -m pipeline.distill.merge --index {input.index} --parts {input.parts}"
        " --out-src {output.src} --out-tgt {output.tgt} --out-ids {output.ids}"
        " --text-src {output.text_src} --text-tgt {output.text_tgt} --stats {output.stats}"
        " {params.fallback} > {log} 2>&1"


BINARIZE_RUN = "binarize+ref" if LAYOUT.add_references else "binarize"  # its log's name, as bin/ and bin+ref/


rule distill_binarize:
    input:
        train=expand(DISTILL_TEXT, lang=LANGS),
        teacher_bin=bin_files(BIN_DIR),
        references=expand(SPM_TEXT, split="train", lang=LANGS) if DISTILL_CFG["add_references"] else [],
    output:
        bin_files(DISTILL_BIN),
    params:
        add_references=f"--add-references {SPM_TEXT_PREFIX}train" if DISTILL_CFG["add_references"] else "",
    log:
        "logs/distill/" + DISTILL_RUN + "/" + BINARIZE_RUN + ".log",
    benchmark:
        "benchmarks/distill/" + DISTILL_RUN + "/" + BINARIZE_RUN + ".tsv"
    threads: res("binarize")["threads"]
    resources:
        mem_mb=res("binarize")["mem_mb"],
        runtime=res("binarize")["runtime"],
        gpu=res("binarize")["gpus"],
    shell:
        "{PY} -m pipeline.distill.binarize --trainpref {DISTILL_TEXT_PREFIX} --src {SRC} --tgt {TGT}"
        " --teacher-bin {BIN_DIR} --destdir {DISTILL_BIN} --workers {threads} {params.add_references} > {log} 2>&1"


rule distill:
    input:
        bin_files(DISTILL_BIN),
        DISTILL_STATS,
        expand(DISTILL_PLAIN, lang=LANGS),
        DISTILL_SETTINGS,
