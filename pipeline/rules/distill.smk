# Distillation stage (sequence-level KD): the teacher beam-decodes the cleaned training source in
# shards, one job each (a killed run redoes only the shards without a finished output); the shards
# are reassembled by sentence id, a target is selected and filtered per pair, and the distilled
# corpus is binarised with the teacher's dictionary next to the real dev and test sets.
# Settings: config `distill:` (defaults in config/schema.yaml); compute per shard job:
# config `resources.distill` (threads, gpus, mem_mb, runtime).

DISTILL_CFG = config["distill"]
DISTILL_RES = config.get("resources", {}).get("distill", {})
# the teacher's checkpoint (TEACHER_MODEL of pipeline/rules/train.smk when that is included first)
DISTILL_TEACHER = globals().get("TEACHER_MODEL", "work/models/teacher/model.pt")
DISTILL_SHARDS = int(DISTILL_CFG["shards"])
# zero-padded shard ids (at least 3 digits); the shard count is part of every shard's file name,
# so that shards made for another count are never taken for finished ones
DISTILL_ID_WIDTH = max(3, len(str(DISTILL_SHARDS - 1)))
DISTILL_SHARD_IDS = [f"{i:0{DISTILL_ID_WIDTH}d}" for i in range(DISTILL_SHARDS)]
DISTILL_SHARD = f"work/distill/shards/shard{{shard}}-of-{DISTILL_SHARDS:0{DISTILL_ID_WIDTH}d}.jsonl"
DISTILL_BIN = "work/distill/bin"
DISTILL_BIN_FILES = [f"{DISTILL_BIN}/dict.{lang}.txt" for lang in LANGS] + [
    f"{DISTILL_BIN}/{FAIRSEQ_SPLIT[split]}.{SRC}-{TGT}.{lang}.{ext}"
    for split in SPLITS
    for lang in LANGS
    for ext in ("bin", "idx")
]
DISTILL_STATS = "results/distill/stats.json"

if DISTILL_CFG["nbest"] > DISTILL_CFG["beam"]:
    raise ValueError(f"config distill.nbest ({DISTILL_CFG['nbest']}) must not exceed distill.beam ({DISTILL_CFG['beam']})")
if DISTILL_CFG["max_tokens"] is None and DISTILL_CFG["batch_size"] is None:
    raise ValueError("config distill: set max_tokens or batch_size (or both)")


def distill_decode_args():
    cfg = DISTILL_CFG
    args = [
        f"--beam {cfg['beam']}",
        f"--nbest {cfg['nbest']}",
        f"--lenpen {cfg['lenpen']}",
        f"--max-len-a {cfg['max_len_a']}",
        f"--max-len-b {cfg['max_len_b']}",
    ]
    if cfg["max_tokens"] is not None:
        args.append(f"--max-tokens {cfg['max_tokens']}")
    if cfg["batch_size"] is not None:
        args.append(f"--batch-size {cfg['batch_size']}")
    if cfg["fp16"]:
        args.append("--fp16")
    if cfg.get("backend", "fairseq") == "ctranslate2":
        args.append(f"--backend ctranslate2 --ct2-model work/ct2/{TEACHER}")
        args.append(ct2_decoding_args(cfg["max_tokens"], cfg["batch_size"]))
    return " ".join(args)


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


rule distill_decode_shard:
    input:
        src=f"work/data/spm/train.{SRC}",
        ids="work/data/clean/train.ids",
        model=DISTILL_TEACHER,
        dicts=[f"{BIN_DIR}/dict.{lang}.txt" for lang in LANGS],
        ct2=[f"work/ct2/{TEACHER}/model.bin"] if DISTILL_CFG.get("backend", "fairseq") == "ctranslate2" else [],
    output:
        DISTILL_SHARD,
    wildcard_constraints:
        shard=rf"\d{{{DISTILL_ID_WIDTH}}}",
    params:
        args=distill_decode_args(),
    log:
        "logs/distill/decode_shard{shard}.log",
    benchmark:
        "benchmarks/distill/decode_shard{shard}.tsv"
    threads: DISTILL_RES.get("threads", 2)
    resources:
        mem_mb=DISTILL_RES.get("mem_mb", 8000),
        runtime=DISTILL_RES.get("runtime", 240),
        gpu=DISTILL_RES.get("gpus", 1),
    # pipeline.devices gives each concurrent shard its own GPU (Snakemake's gpu resource is only a
    # counter in local mode); without a GPU the shard decodes on the CPU.
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.distill.decode_shard --model {input.model} --data {BIN_DIR}"
        " --source {input.src} --ids {input.ids} --shard {wildcards.shard} --num-shards {DISTILL_SHARDS}"
        " --threads {threads} {params.args} --out {output} > {log} 2>&1"


rule distill_assemble:
    input:
        shards=expand(DISTILL_SHARD, shard=DISTILL_SHARD_IDS),
        ids="work/data/clean/train.ids",
        src_spm=f"work/data/spm/train.{SRC}",
        ref_spm=f"work/data/spm/train.{TGT}",
        src_text=f"work/data/clean/train.{SRC}",
        ref_text=f"work/data/clean/train.{TGT}",
        spm_model="work/data/spm/spm.model",
    output:
        src=f"work/distill/train.{SRC}",
        tgt=f"work/distill/train.{TGT}",
        ids="work/distill/train.ids",
        text_src=f"results/distill/train.{SRC}.txt",
        text_tgt=f"results/distill/train.{TGT}.txt",
        stats=report(DISTILL_STATS, category="Distillation", labels={"statistics": "distilled corpus"}),
    params:
        args=distill_assemble_args(),
    log:
        "logs/distill/assemble.log",
    benchmark:
        "benchmarks/distill/assemble.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        "{PY} -m pipeline.distill.assemble --shards {input.shards} --num-shards {DISTILL_SHARDS}"
        " --ids {input.ids} --src-spm {input.src_spm} --ref-spm {input.ref_spm}"
        " --src-text {input.src_text} --ref-text {input.ref_text} --spm-model {input.spm_model}"
        " --out-src {output.src} --out-tgt {output.tgt} --out-ids {output.ids}"
        " --text-src {output.text_src} --text-tgt {output.text_tgt} --stats {output.stats}"
        " {params.args} > {log} 2>&1"


rule distill_binarize:
    input:
        train=[f"work/distill/train.{lang}" for lang in LANGS],
        teacher_bin=BIN_FILES,
    output:
        DISTILL_BIN_FILES,
    log:
        "logs/distill/binarize.log",
    benchmark:
        "benchmarks/distill/binarize.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        "{PY} -m pipeline.distill.binarize --trainpref work/distill/train --src {SRC} --tgt {TGT}"
        " --teacher-bin {BIN_DIR} --destdir {DISTILL_BIN} --workers {threads} > {log} 2>&1"


rule distill:
    input:
        DISTILL_BIN_FILES,
        DISTILL_STATS,
        f"results/distill/train.{SRC}.txt",
        f"results/distill/train.{TGT}.txt",
