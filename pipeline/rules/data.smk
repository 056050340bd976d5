# Data stage: fetch and verify, Moses punctuation normalisation, training-set cleaning,
# joint SentencePiece, fairseq binarisation.

DATA_CFG = config["data"]
BIN_DIR = "work/data/bin"


def fetch_args():
    args = [DATA_CFG["source"], f"--src {SRC}", f"--tgt {TGT}"]
    if DATA_CFG["source"] == "files":
        for split in SPLITS:
            pair = DATA_CFG.get("files", {}).get(split)
            if pair is None:
                raise ValueError(f"config data.files.{split}: missing (source 'files' needs train, dev and test)")
            args += [f"--{split}-src {pair['src']!r}", f"--{split}-tgt {pair['tgt']!r}"]
    elif DATA_CFG.get("mirror"):
        args.append(f"--mirror {DATA_CFG['mirror']!r}")
    limits = [f"{split}={n}" for split, n in DATA_CFG.get("max_lines", {}).items()]
    if limits:
        args.append("--max-lines " + " ".join(limits))
    return " ".join(args)


rule fetch_corpus:
    output:
        expand("work/data/raw/{split}.{lang}", split=SPLITS, lang=LANGS),
    params:
        args=fetch_args(),
    log:
        "logs/data/fetch_corpus.log",
    benchmark:
        "benchmarks/data/fetch_corpus.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{PY} -m pipeline.fetch {params.args} --out work/data/raw > {log} 2>&1"


rule normalize:
    input:
        "work/data/raw/{split}.{lang}",
    output:
        "work/data/norm/{split}.{lang}",
    params:
        off="" if DATA_CFG.get("normalize_punctuation", True) else "--off",
    log:
        "logs/data/normalize.{split}.{lang}.log",
    benchmark:
        "benchmarks/data/normalize.{split}.{lang}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{PY} -m pipeline.normalize --lang {wildcards.lang} {params.off} {input} {output} > {log} 2>&1"


def clean_args():
    cfg = DATA_CFG.get("clean", {})
    args = [f"--max-tokens {cfg.get('max_tokens', 100)}", f"--max-length-ratio {cfg.get('max_length_ratio', 3.0)}"]
    if not cfg.get("remove_identical", True):
        args.append("--keep-identical")
    if not cfg.get("remove_duplicates", True):
        args.append("--keep-duplicates")
    return " ".join(args)


rule clean_train:
    input:
        src=f"work/data/norm/train.{SRC}",
        tgt=f"work/data/norm/train.{TGT}",
    output:
        src=f"work/data/clean/train.{SRC}",
        tgt=f"work/data/clean/train.{TGT}",
        ids="work/data/clean/train.ids",
        stats=report("results/data/clean_stats.json", category="Data", labels={"statistics": "cleaning"}),
    params:
        args=clean_args(),
    log:
        "logs/data/clean_train.log",
    benchmark:
        "benchmarks/data/clean_train.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY} -m pipeline.clean --src-in {input.src} --tgt-in {input.tgt}"
        " --src-out {output.src} --tgt-out {output.tgt} --ids-out {output.ids} --stats {output.stats}"
        " {params.args} > {log} 2>&1"


def text_for_spm(wildcards):
    """Training text is the cleaned corpus; dev and test are never filtered."""
    if wildcards.split == "train":
        return f"work/data/clean/train.{wildcards.lang}"
    return f"work/data/norm/{wildcards.split}.{wildcards.lang}"


rule spm_train:
    input:
        expand("work/data/clean/train.{lang}", lang=LANGS),
    output:
        model="work/data/spm/spm.model",
        vocab="work/data/spm/spm.vocab",
    params:
        cfg=DATA_CFG.get("spm", {}),
    log:
        "logs/data/spm_train.log",
    benchmark:
        "benchmarks/data/spm_train.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{PY} -m pipeline.spm train --model-prefix work/data/spm/spm"
        " --vocab-size {params.cfg[vocab_size]} --model-type {params.cfg[model_type]}"
        " --character-coverage {params.cfg[character_coverage]} --threads {threads}"
        " {input} > {log} 2>&1"


rule spm_encode:
    input:
        text=text_for_spm,
        model="work/data/spm/spm.model",
    output:
        "work/data/spm/{split}.{lang}",
    wildcard_constraints:
        split="train|dev|test",
    log:
        "logs/data/spm_encode.{split}.{lang}.log",
    benchmark:
        "benchmarks/data/spm_encode.{split}.{lang}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{PY} -m pipeline.spm encode --model {input.model} {input.text} {output} > {log} 2>&1"


BIN_FILES = [f"{BIN_DIR}/dict.{lang}.txt" for lang in LANGS] + [
    f"{BIN_DIR}/{FAIRSEQ_SPLIT[split]}.{SRC}-{TGT}.{lang}.{ext}"
    for split in SPLITS
    for lang in LANGS
    for ext in ("bin", "idx")
]


rule binarize:
    input:
        expand("work/data/spm/{split}.{lang}", split=SPLITS, lang=LANGS),
    output:
        BIN_FILES,
    log:
        "logs/data/binarize.log",
    benchmark:
        "benchmarks/data/binarize.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "rm -rf {BIN_DIR}.tmp && "
        "{PY} -m fairseq_cli.preprocess --source-lang {SRC} --target-lang {TGT}"
        " --trainpref work/data/spm/train --validpref work/data/spm/dev --testpref work/data/spm/test"
        " --destdir {BIN_DIR}.tmp --joined-dictionary --workers {threads} > {log} 2>&1"
        " && mkdir -p {BIN_DIR} && mv {BIN_DIR}.tmp/* {BIN_DIR}/ && rmdir {BIN_DIR}.tmp"


rule data:
    input:
        BIN_FILES,
        "results/data/clean_stats.json",
