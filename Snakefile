"""Sequence-level knowledge distillation for NMT: data -> teacher -> distill -> students -> evaluate -> report.

Run from the repository root: `snakemake --profile profiles/default [TARGET]`.
Targets: data, teacher, distill, students, evaluate, report, all (the default), export, compare.
Every stage writes into a directory keyed by its settings (work/<stage>/<name>-<key>/, pipeline.settings);
an experiment (config `experiment`) has its evaluations and report in results/<experiment>/.
"""

import os

from snakemake.utils import min_version, validate

min_version("9.0")


report: "pipeline/report/workflow.rst"


# config/config.yaml holds every setting's value; a --configfile is merged into it key by key.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The schema checks types, ranges and that every key is there; it holds no defaults.
validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"), set_default=False)


include: "pipeline/rules/common.smk"  # first: paths, models, config accessors, decoding flags
include: "pipeline/rules/data.smk"
include: "pipeline/rules/teacher.smk"
include: "pipeline/rules/distill.smk"
include: "pipeline/rules/kdcache.smk"
include: "pipeline/rules/students.smk"
include: "pipeline/rules/ct2.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/export.smk"
include: "pipeline/rules/experiments.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.teacher.input,
        rules.distill.input if USES_DISTILLATION else [],
        rules.students.input,
        rules.evaluate.input,
        rules.report.input,
