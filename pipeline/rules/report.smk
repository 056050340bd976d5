# Report stage: a table per evaluated set (summary.csv: one long table with a set column), the best
# student of each variant chosen on dev and reported once on report.set (summary_best.csv), paired
# bootstrap resampling of every model against the baseline student and the teacher (report.bootstrap),
# mean ± sd over students.seeds, the students' speed-ups timed beside the teacher (summary_speedup.csv),
# plots, and the Snakemake HTML report. Variant, alpha, temperature and
# seed come from each evaluation's copy of the model's spec.json. Everything under results/<experiment>/
# (RESULTS); the statistics of the data and distillation stages are read beside their keyed outputs.
# Compute: resources.report.

PLOTS = ["bleu_vs_speed", "bleu_vs_alpha", "training_curves"]


rule report_summary:
    input:
        evals=eval_outputs([*MODELS, *ENSEMBLE_EVALUATED]),  # every evaluated set: dev for the choices, report.set for the results
        beam=[EVAL_BEAM.format(model=name, evalset=evalset) for name in [*MODELS, *ENSEMBLE_EVALUATED] for evalset in EVAL_SETS],
        refs=eval_references(),
        ct2_evals=eval_ct2_outputs(MODELS),
        speedups=speedup_outputs(STUDENTS),  # each student timed beside the teacher (evaluate.speedup_rounds)
        # training finished, so each model's progress records are complete (the experiment's copies)
        curves=[TRAIN_METRICS.format(model=name) for name in TRAINED],
        distill_stats=[DISTILL_STATS] if USES_DISTILLATION else [],  # the fallback share of distilled students
    output:
        csv=report(SUMMARY_CSV, category="Results", labels={"table": "every set (csv)"}),
        best_csv=report(RESULTS + "/summary_best.csv", category="Results",
                        labels={"table": f"best students: chosen on dev, on {SUMMARY_SET} (csv)"}),
        md=RESULTS + "/summary.md",
        ct2_csv=(
            [report(RESULTS + "/summary_ct2.csv", category="Results", labels={"table": "CTranslate2 (csv)"})]
            if EVAL_CT2
            else []
        ),
        speedup_csv=(
            [report(RESULTS + "/summary_speedup.csv", category="Results",
                    labels={"table": "speed-up vs teacher, side by side (csv)"})]
            if SPEEDUP_STUDENTS
            else []
        ),
        plots=[
            report(f"{PLOTS_DIR}/{name}.png", category="Results", labels={"plot": name.replace("_", " ")})
            for name in PLOTS
        ],
    params:
        bootstrap=flags(("--bootstrap-samples", REPORT_CFG["bootstrap"]["samples"]),
                        ("--bootstrap-seed", REPORT_CFG["bootstrap"]["seed"])),
        ct2=lambda wildcards, input, output: (
            f" --ct2-evals {' '.join(input.ct2_evals)} --ct2-csv {output.ct2_csv}" if input.ct2_evals else ""
        ),
        distill=lambda wildcards, input: f" --distill-stats {input.distill_stats}" if input.distill_stats else "",
        speedup=lambda wildcards, input, output: (
            f" --speedups {' '.join(input.speedups)} --speedup-csv {output.speedup_csv}" if input.speedups else ""
        ),
    log:
        f"logs/report/{EXPERIMENT}.summary.log",
    benchmark:
        f"benchmarks/report/{EXPERIMENT}.summary.tsv"
    threads: res("report")["threads"]
    resources:
        mem_mb=res("report")["mem_mb"],
        runtime=res("report")["runtime"],
    shell:
        "{PY} -m pipeline.report --evals {input.evals} --set {SUMMARY_SET} {params.bootstrap} --curves {input.curves}"
        " --csv {output.csv} --best-csv {output.best_csv} --md {output.md} --plots {PLOTS_DIR}{params.ct2}{params.distill}{params.speedup}"
        " > {log} 2>&1"


rule report:
    input:
        rules.report_summary.output,
