# Teacher caches for word-level KD (pipeline.kdcache): the teacher runs once over a word-KD student's
# training data (the references, or the distilled corpus) and stores its top-K (students.kd_topk) token
# ids and log-probabilities per target token; the word_kd criterion reads them by sample id
# (--kd-teacher-cache) instead of running the teacher in every step. An ensemble's cache holds the
# members' average (every member is an input; `--teacher` takes them all). One job per shard and split
# (a killed run redoes only the shards without a finished directory), then an index step that checks
# every shard was made for the current teacher, dictionaries and data and writes cache.json.
# Each cache has its keyed directory (KDCACHE_DIR: work/kdcache/<targets>-<key>, {kdir} in the rules).
# Settings: students.kd_cache, kd_topk, kd_cache_shards; compute: resources.kdcache per shard job.

KDCACHE_DATA = {"reference": BIN_DIR, "distilled": DISTILL_BIN}  # by training targets (KDCACHE_TARGETS[kdir])
KDCACHE_DIR_PATTERN = dir_pattern(KDCACHE_DIRS, KDCACHE_DIRS)
KDCACHE_SPLIT_NAMES = {"train": "train", "valid": "dev"}  # fairseq split -> our split (split_files)
KDCACHE_SPLITS_ARG = ",".join(KDCACHE_SPLITS)


def kdcache_shard_inputs(wildcards):
    data = KDCACHE_DATA[KDCACHE_TARGETS[wildcards.kdir]]
    return {"teacher": TEACHER_MODELS, "dicts": dict_files(data),
            "split": split_files(data, KDCACHE_SPLIT_NAMES[wildcards.split])}


rule kdcache_shard:
    input:
        unpack(kdcache_shard_inputs),
    output:
        directory(KDCACHE_SHARD),
    wildcard_constraints:
        kdir=KDCACHE_DIR_PATTERN,
        split="train|valid",
        shard=rf"\d{{{KDCACHE_ID_WIDTH}}}",
    params:
        data=lambda wildcards: KDCACHE_DATA[KDCACHE_TARGETS[wildcards.kdir]],
        cache=lambda wildcards: KDCACHE_DIR.format(kdir=wildcards.kdir),
        topk=STUDENTS_CFG["kd_topk"],  # a new K rebuilds the cache (and is part of its key)
    log:
        "logs/kdcache/{kdir}.{split}.shard{shard}.log",
    benchmark:
        "benchmarks/kdcache/{kdir}.{split}.shard{shard}.tsv"
    threads: res("kdcache")["threads"]
    resources:
        mem_mb=res("kdcache")["mem_mb"],
        runtime=res("kdcache")["runtime"],
        gpu=res("kdcache")["gpus"],
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "{PY} -m pipeline.devices --gpus {resources.gpu} --"
        " {PY} -m pipeline.kdcache shard --teacher {input.teacher} --data {params.data} --cache {params.cache}"
        " --split {wildcards.split} --shard {wildcards.shard} --num-shards {KDCACHE_SHARDS} --topk {params.topk}"
        " --threads {threads} > {log} 2>&1"


rule kdcache_index:
    input:
        shards=lambda wildcards: expand(KDCACHE_SHARD, kdir=wildcards.kdir, split=KDCACHE_SPLITS,
                                        shard=KDCACHE_SHARD_IDS),
        teacher=TEACHER_MODELS,
    output:
        KDCACHE_INDEX,
    wildcard_constraints:
        kdir=KDCACHE_DIR_PATTERN,
    params:
        data=lambda wildcards: KDCACHE_DATA[KDCACHE_TARGETS[wildcards.kdir]],
        cache=lambda wildcards: KDCACHE_DIR.format(kdir=wildcards.kdir),
    log:
        "logs/kdcache/{kdir}.index.log",
    localrule: True  # reads the shards' metadata and hashes the inputs: no cluster job
    shell:
        "{PY} -m pipeline.kdcache index --teacher {input.teacher} --data {params.data} --cache {params.cache}"
        " --num-shards {KDCACHE_SHARDS} --splits {KDCACHE_SPLITS_ARG} > {log} 2>&1"

