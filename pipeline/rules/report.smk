# Report stage: the summary table of every model on report.set, plots, and the Snakemake HTML
# report. Variant, alpha and temperature come from each evaluation's copy of the model's spec.json.
# Compute: resources.report.

PLOTS = ["bleu_vs_speed", "bleu_vs_alpha", "training_curves"]


rule report_summary:
    input:
        evals=eval_outputs(MODELS, [SUMMARY_SET]),
        ct2_evals=eval_ct2_outputs(MODELS, [SUMMARY_SET]),
        # training finished, so each model's progress records are complete
        models=[MODEL.format(model=name) for name in MODELS],
        distill_stats=[DISTILL_STATS] if USES_DISTILLATION else [],  # the fallback share of distilled students
    output:
        csv=report("results/summary.csv", category="Results", labels={"table": "summary (csv)"}),
        md="results/summary.md",
        ct2_csv=(
            [report("results/summary_ct2.csv", category="Results", labels={"table": "CTranslate2 (csv)"})]
            if EVAL_CT2
            else []
        ),
        plots=[
            report(f"results/plots/{name}.png", category="Results", labels={"plot": name.replace("_", " ")})
            for name in PLOTS
        ],
    params:
        curves=[TRAIN_METRICS.format(model=name) for name in MODELS],
        ct2=lambda wildcards, input, output: (
            f" --ct2-evals {' '.join(input.ct2_evals)} --ct2-csv {output.ct2_csv}" if input.ct2_evals else ""
        ),
        distill=lambda wildcards, input: f" --distill-stats {input.distill_stats}" if input.distill_stats else "",
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    threads: res("report")["threads"]
    resources:
        mem_mb=res("report")["mem_mb"],
        runtime=res("report")["runtime"],
    shell:
        "{PY} -m pipeline.report --evals {input.evals} --curves {params.curves}"
        " --csv {output.csv} --md {output.md} --plots results/plots{params.ct2}{params.distill} > {log} 2>&1"


rule report:
    input:
        rules.report_summary.output,
