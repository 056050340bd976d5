# Students and the final comparison: summary table, plots, and the Snakemake HTML report.

STUDENTS = [name for name in MODELS if name != TEACHER]
SUMMARY_SET = "test"
PLOTS = ["bleu_vs_speed", "bleu_vs_alpha", "training_curves"]


rule students:
    input:
        [f"work/models/{name}/model.pt" for name in STUDENTS],


rule report_summary:
    input:
        evals=eval_outputs(list(MODELS), [SUMMARY_SET]),
        ct2_evals=eval_ct2_outputs(list(MODELS), [SUMMARY_SET]),
        # training finished, so each model's progress records are complete
        models=[f"work/models/{name}/model.pt" for name in MODELS],
    output:
        csv=report("results/summary.csv", category="Results", labels={"table": "summary (csv)"}),
        md="results/summary.md",
        ct2_csv=(
            [report("results/summary_ct2.csv", category="Results", labels={"table": "CTranslate2 (csv)"})]
            if "ctranslate2" in EVAL_BACKENDS
            else []
        ),
        plots=[
            report(f"results/plots/{name}.png", category="Results", labels={"plot": name.replace("_", " ")})
            for name in PLOTS
        ],
    params:
        curves=[f"results/train/{name}.jsonl" for name in MODELS],
        ct2=lambda wildcards, input, output: (
            f" --ct2-evals {' '.join(input.ct2_evals)} --ct2-csv {output.ct2_csv}" if input.ct2_evals else ""
        ),
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} -m pipeline.report --evals {input.evals} --curves {params.curves}"
        " --csv {output.csv} --md {output.md} --plots results/plots{params.ct2} > {log} 2>&1"


rule report:
    input:
        rules.report_summary.output,
