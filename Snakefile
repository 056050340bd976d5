"""Sequence-level knowledge distillation for NMT: data -> teacher -> distill -> students -> report.

Run from the repository root: `snakemake --profile profiles/default [TARGET]`.
"""

import os
import shlex
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


report: "pipeline/report/workflow.rst"


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"))

# Stage CLIs run with this interpreter (the .venv's), importing this repository's packages.
PY = sys.executable
REPO = workflow.basedir
# (shell.prefix is formatted like a command: the doubled braces survive as shell syntax)
shell.prefix("set -euo pipefail; export PYTHONPATH=" + REPO + "${{PYTHONPATH:+:$PYTHONPATH}}; ")

SRC, TGT = config["src"], config["tgt"]
LANGS = [SRC, TGT]
SPLITS = ["train", "dev", "test"]
# fairseq's names for our splits
FAIRSEQ_SPLIT = {"train": "train", "dev": "valid", "test": "test"}


include: "pipeline/rules/data.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/ct2.smk"
include: "pipeline/rules/distill.smk"
include: "pipeline/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.teacher.input,
        rules.distill.input,
        rules.students.input,
        rules.evaluate.input,
        rules.report.input,
