# Data stage: fetch and verify, Moses punctuation normalisation, training-set cleaning,
# joint SentencePiece, fairseq binarisation (with an existing teacher, teacher.checkpoints: its
# SentencePiece model and dictionary instead of new ones). Settings: config `data:`; compute: resources.data
# (its threads: SentencePiece training's threads, and the processes of normalisation and encoding,
# which work on chunks of lines; fetching and cleaning are single-threaded) and resources.binarize.


def fetch_args():
    args = [DATA_CFG["source"], f"--src {SRC}", f"--tgt {TGT}"]
    if DATA_CFG["source"] == "files":
        for split in SPLITS:
            pair = DATA_CFG["files"][split]  # all three: checked in common.smk
            args += [f"--{split}-src {pair['src']!r}", f"--{split}-tgt {pair['tgt']!r}"]
    elif DATA_CFG["mirror"]:
        args.append(f"--mirror {DATA_CFG['mirror']!r}")
    limits = [f"{split}={n}" for split, n in DATA_CFG["max_lines"].items()]
    if limits:
        args.append("--max-lines " + " ".join(limits))
    return " ".join(args)


rule fetch_corpus:
    output:
        expand(RAW, split=SPLITS, lang=LANGS),
    params:
        args=fetch_args(),
    log:
        "logs/data/" + DATA_RUN + "/fetch_corpus.log",
    benchmark:
        "benchmarks/data/" + DATA_RUN + "/fetch_corpus.tsv"
    threads: 1
    resources:
        mem_mb=res("data")["mem_mb"],
        runtime=res("data")["runtime"],
    shell:
        "{PY} -m pipeline.fetch {params.args} --out {RAW_DIR} > {log} 2>&1"


rule normalize:
    input:
        RAW,
    output:
        NORM,
    params:
        off="" if DATA_CFG["normalize_punctuation"] else "--off",
    log:
        "logs/data/" + DATA_RUN + "/normalize.{split}.{lang}.log",
    benchmark:
        "benchmarks/data/" + DATA_RUN + "/normalize.{split}.{lang}.tsv"
    threads: res("data")["threads"]  # processes normalising chunks of lines (--workers)
    resources:
        mem_mb=res("data")["mem_mb"],
        runtime=res("data")["runtime"],
    shell:
        "{PY} -m pipeline.normalize --lang {wildcards.lang} {params.off} --workers {threads} {input} {output} > {log} 2>&1"


def clean_args():
    cfg = DATA_CFG["clean"]
    return flags(("--max-tokens", cfg["max_tokens"]), ("--max-length-ratio", cfg["max_length_ratio"]),
                 ("--keep-identical", not cfg["remove_identical"]), ("--keep-duplicates", not cfg["remove_duplicates"]))


rule clean_train:
    input:
        src=NORM.format(split="train", lang=SRC),
        tgt=NORM.format(split="train", lang=TGT),
    output:
        src=CLEAN_TEXT.format(lang=SRC),
        tgt=CLEAN_TEXT.format(lang=TGT),
        ids=CLEAN_IDS,
        stats=report(CLEAN_STATS, category="Data", labels={"statistics": "cleaning"}),
    params:
        args=clean_args(),
    log:
        "logs/data/" + DATA_RUN + "/clean_train.log",
    benchmark:
        "benchmarks/data/" + DATA_RUN + "/clean_train.tsv"
    threads: 1
    resources:
        mem_mb=res("data")["mem_mb"],
        runtime=res("data")["runtime"],
    shell:
        "{PY} -m pipeline.clean --src-in {input.src} --tgt-in {input.tgt}"
        " --src-out {output.src} --tgt-out {output.tgt} --ids-out {output.ids} --stats {output.stats}"
        " {params.args} > {log} 2>&1"


def text_for_spm(wildcards):
    """Training text is the cleaned corpus; dev and test are never filtered."""
    if wildcards.split == "train":
        return CLEAN_TEXT.format(lang=wildcards.lang)
    return NORM.format(split=wildcards.split, lang=wildcards.lang)


if EXTERNAL:

    # An existing fairseq teacher (teacher.checkpoints): its SentencePiece model is the run's, and its
    # dictionary binarises every split (rule binarize), so the students share both.
    rule teacher_spm:
        input:
            EXTERNAL.spm,
        output:
            SPM_MODEL,
        log:
            "logs/data/" + DATA_RUN + "/teacher_spm.log",
        localrule: True
        shell:
            "cp {input:q} {output} 2> {log}"

else:

    rule spm_train:
        input:
            expand(CLEAN_TEXT, lang=LANGS),
        output:
            model=SPM_MODEL,
            vocab=SPM_PREFIX + ".vocab",
        params:
            cfg=DATA_CFG["spm"],
        log:
            "logs/data/" + DATA_RUN + "/spm_train.log",
        benchmark:
            "benchmarks/data/" + DATA_RUN + "/spm_train.tsv"
        threads: res("data")["threads"]
        resources:
            mem_mb=res("data")["mem_mb"],
            runtime=res("data")["runtime"],
        shell:
            "{PY} -m pipeline.spm train --model-prefix {SPM_PREFIX}"
            " --vocab-size {params.cfg[vocab_size]} --model-type {params.cfg[model_type]}"
            " --character-coverage {params.cfg[character_coverage]} --threads {threads}"
            " {input} > {log} 2>&1"


rule spm_encode:
    input:
        text=text_for_spm,
        model=SPM_MODEL,
    output:
        SPM_TEXT,
    wildcard_constraints:
        split="train|dev|test",
    params:
        # dev and test lines the models cannot take stop the data stage (file, line); never cut or dropped
        max_pieces=lambda wildcards: "" if wildcards.split == "train" else f"--max-pieces {EVAL_MAX_PIECES}",
    log:
        "logs/data/" + DATA_RUN + "/spm_encode.{split}.{lang}.log",
    benchmark:
        "benchmarks/data/" + DATA_RUN + "/spm_encode.{split}.{lang}.tsv"
    threads: res("data")["threads"]  # processes encoding chunks of lines (--workers)
    resources:
        mem_mb=res("data")["mem_mb"],
        runtime=res("data")["runtime"],
    shell:
        "{PY} -m pipeline.spm encode --model {input.model} {params.max_pieces} --workers {threads} {input.text} {output} > {log} 2>&1"


rule binarize:
    input:
        text=expand(SPM_TEXT, split=SPLITS, lang=LANGS),
        teacher_dict=[EXTERNAL.dictionary] if EXTERNAL else [],  # an existing teacher's: both languages
    output:
        bin_files(BIN_DIR),
    params:
        srcdict=f" --srcdict {shlex.quote(str(EXTERNAL.dictionary))}" if EXTERNAL else "",
    log:
        "logs/data/" + DATA_RUN + "/binarize.log",
    benchmark:
        "benchmarks/data/" + DATA_RUN + "/binarize.tsv"
    threads: res("binarize")["threads"]
    resources:
        mem_mb=res("binarize")["mem_mb"],
        runtime=res("binarize")["runtime"],
    shell:
        "rm -rf {BIN_DIR}.tmp && "
        "{PY} -m fairseq_cli.preprocess --source-lang {SRC} --target-lang {TGT}"
        " --trainpref {SPM_TEXT_PREFIX}train --validpref {SPM_TEXT_PREFIX}dev --testpref {SPM_TEXT_PREFIX}test"
        " --destdir {BIN_DIR}.tmp --joined-dictionary{params.srcdict} --workers {threads} > {log} 2>&1"
        " && mkdir -p {BIN_DIR} && mv {BIN_DIR}.tmp/* {BIN_DIR}/ && rmdir {BIN_DIR}.tmp"


rule data:
    input:
        bin_files(BIN_DIR),
        CLEAN_STATS,
        DATA_SETTINGS,
