"""The comparison every run ends with: a table per evaluation set, the students chosen on dev, and plots.

    python -m pipeline.report --evals results/<experiment>/eval/*/*.json --set test --curves results/<experiment>/train/*.jsonl \
        --csv results/<experiment>/summary.csv --best-csv results/<experiment>/summary_best.csv --md results/<experiment>/summary.md \
        --plots results/<experiment>/plots [--ct2-evals results/<experiment>/eval/*/*.ct2-*.json --ct2-csv results/<experiment>/summary_ct2.csv]
        [--distill-stats work/distill/<dir>/stats.json]
        [--speedups results/<experiment>/eval/*/*.speedup-*.json --speedup-csv results/<experiment>/summary_speedup.csv]

BLEU/chrF are beam-search scores; speeds are sentences per second. Each evaluation carries its model's
spec.json (key "spec", written by the workflow beside model.pt): variant, alpha, temperature and seed
come from there, never from the model's name.

Decisions on dev, results on test: the best student of each variant (its alpha, T and seed) is the
one with the highest BLEU on --choose-on (dev), and is reported once on --set (report.set). Without
an evaluation on dev no student is chosen (choosing on test would tune on it), and the summary says so.
The baseline student of the comparisons is the baseline variant's model chosen on dev (its first seed
without dev). Every model of a set is compared with that baseline and with the teacher by sacreBLEU's
paired bootstrap resampling (pipeline.significance; --bootstrap-samples, --bootstrap-seed), on the beam
hypotheses and the reference each evaluation recorded (keys beam.hypotheses, reference): p-values, and
the bootstrap mean with the half-width of its 95% confidence interval. Students trained with several
seeds get the mean and sample standard deviation over the seeds of their (variant, alpha, T).
CTranslate2 evaluations (evaluate.backends) add a table and their points in the speed plot: per model,
set and compute type, BLEU and speed against the same model under fairseq (what quantisation costs
and buys) and the speed-up against the fairseq teacher.
Speed-ups "vs teacher" of the tables are ratios of speeds measured in separate evaluation jobs, which drift apart
on a shared machine; --speedups (pipeline.benchmarks.speedup, rule speedup_vs_teacher) add each student's
speed-up timed beside the teacher in one job, passes alternating, per backend: the median over the rounds with
its range, in a table of their own (--speedup-csv) and beside the chosen students.
Students on distilled targets (spec "targets": "distilled") show the distillation's fallback share
(work/distill/<dir>/stats.json "fallback_share": pairs whose target the filters replaced by the reference
or dropped): a student with a high share learnt mostly the references.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.cli import run  # noqa: E402
from pipeline.corpus import read_lines, write_lines  # noqa: E402
from pipeline.errors import DataError  # noqa: E402
from pipeline.significance import Bootstrap, paired_bootstrap  # noqa: E402

log = logging.getLogger("pipeline.report")
TEACHER, BASELINE = "teacher", "baseline"  # variants (spec.json): the rows the comparisons are against
CHOOSE_ON = "dev"  # the set choices are made on
SCORE_TOLERANCE = 1e-6  # BLEU of a hypotheses file against its evaluation's figure
COLUMNS = [
    "set", "model", "variant", "alpha", "temperature", "seed", "bleu", "bleu_bootstrap_mean", "bleu_ci95", "chrf",
    "bleu_greedy", "delta_bleu_vs_baseline", "p_vs_baseline", "delta_bleu_vs_teacher", "p_vs_teacher", "baseline_model",
    "seeds", "bleu_mean_over_seeds", "bleu_sd_over_seeds", "chrf_mean_over_seeds", "chrf_sd_over_seeds", "chosen_on",
    "parameters", "size_mb", "sent_per_s_greedy", "sent_per_s_beam", "speedup_vs_teacher", "bootstrap_samples",
    "bootstrap_seed", "fallback_share", "speedup_side_by_side",
]
BEST_COLUMNS = [
    "variant", "model", "alpha", "temperature", "seed", "chosen_on", "chosen_on_bleu", "set", "bleu",
    "bleu_bootstrap_mean", "bleu_ci95", "chrf", "delta_bleu_vs_baseline", "p_vs_baseline", "delta_bleu_vs_teacher",
    "p_vs_teacher", "baseline_model", "sent_per_s_beam", "speedup_vs_teacher", "speedup_side_by_side", "bootstrap_samples",
    "bootstrap_seed",
]
CT2_COLUMNS = [
    "set", "model", "compute_type", "runs_as", "vmap", "bleu", "chrf", "bleu_greedy", "delta_bleu_vs_fairseq",
    "sent_per_s_greedy", "sent_per_s_beam", "speedup_vs_fairseq", "speedup_vs_fairseq_teacher", "model_bin_mb",
]


def describe(result: dict, path: Path) -> dict:
    """The evaluation's copy of the model's spec.json (key "spec"): variant, alpha, temperature, seed."""
    spec = result.get("spec")
    if not isinstance(spec, dict) or "variant" not in spec:
        raise DataError(f"{path}: no model spec (key \"spec\", from work/models/<model>/spec.json): "
                          "evaluate the model again with pipeline.evaluate --spec")
    return spec


def load_row(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable evaluation result ({err})") from None
    spec = describe(result, path)
    size = result.get("model_size", {})
    return {
        "model": result["model"],
        "variant": spec["variant"],
        "alpha": spec.get("alpha"),
        "temperature": spec.get("temperature"),
        "seed": spec.get("seed"),
        "bleu": result["beam"]["bleu"]["score"],
        "chrf": result["beam"]["chrf"]["score"],
        "bleu_greedy": result["greedy"]["bleu"]["score"],
        "parameters": size.get("parameters"),
        "size_mb": size.get("stripped_checkpoint_bytes", 0) / 1e6,
        "sent_per_s_greedy": result["greedy"]["speed"]["sentences_per_s"],
        "sent_per_s_beam": result["beam"]["speed"]["sentences_per_s"],
        "signature": result["beam"]["bleu"]["signature"],
        "set": result["set"],
        "hypotheses": result["beam"].get("hypotheses"),  # what the paired bootstrap resamples
        "reference": result.get("reference"),
        "path": path,
        "targets": spec.get("targets"),
    }


def load_ct2_row(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("backend") != "ctranslate2":
            raise KeyError("backend")
        return {
            "model": result["model"],
            "compute_type": result["compute_type"],
            "runs_as": (result.get("runtime") or {}).get("compute_type", result["compute_type"]),
            "vmap": bool((result.get("runtime") or {}).get("vocabulary_shortlist", False)),
            "bleu": result["beam"]["bleu"]["score"],
            "chrf": result["beam"]["chrf"]["score"],
            "bleu_greedy": result["greedy"]["bleu"]["score"],
            "sent_per_s_greedy": result["greedy"]["speed"]["sentences_per_s"],
            "sent_per_s_beam": result["beam"]["speed"]["sentences_per_s"],
            "model_bin_mb": (result.get("model_size") or {}).get("model_bin_bytes", 0) / 1e6,
            "set": result["set"],
        }
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a CTranslate2 evaluation result of pipeline.evaluate ({err})") from None


SPEEDUP_COLUMNS = [
    "set", "model", "teacher", "backend", "compute_type", "runs_as", "vmap", "sentences", "rounds", "teacher_sent_per_s",
    "student_sent_per_s", "speedup_median", "speedup_min", "speedup_max",
]


def load_speedup_rows(path: Path) -> list[dict]:
    """One row per pair of a pipeline.benchmarks.speedup result: the student's speed-up over its teacher, timed
    side by side (median, min and max over the rounds)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = []
        for pair in result["pairs"]:
            runtime = pair["student"].get("runtime") or {}
            ct2 = pair["backend"] == "ctranslate2"
            rows.append({
                "set": result["set"], "model": pair["student"]["name"], "teacher": pair["teacher"]["name"],
                "backend": pair["backend"], "compute_type": runtime.get("requested_compute_type") if ct2 else None,
                "runs_as": runtime.get("compute_type") if ct2 else None,
                "vmap": bool(runtime.get("vocabulary_shortlist", False)), "sentences": pair["sentences"],
                "rounds": len(pair["speedup"]["rounds"]), "teacher_sent_per_s": pair["teacher"]["sentences_per_s"],
                "student_sent_per_s": pair["student"]["sentences_per_s"], "speedup_median": pair["speedup"]["median"],
                "speedup_min": pair["speedup"]["min"], "speedup_max": pair["speedup"]["max"], "path": path,
            })
        if not rows or rows[0]["set"] is None:
            raise KeyError("set" if rows else "pairs")
        return rows
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a side-by-side speed-up of pipeline.benchmarks.speedup --set ({type(err).__name__}: "
                        f"{err})") from None


def backend_label(r: dict) -> str:
    """fairseq, or CTranslate2 with its compute type (and what it ran as, where that differs)."""
    if r["backend"] != "ctranslate2":
        return r["backend"]
    label = f"CTranslate2 {r['compute_type']}" + ("" if r["runs_as"] in (None, r["compute_type"]) else f" (runs as {r['runs_as']})")
    return label + (" + vocabulary shortlist" if r["vmap"] else "")


def add_side_by_side(rows: list[dict], speedups: list[dict], teacher: str | None) -> None:
    """speedup_side_by_side on the rows of the sets measured: the fairseq median of each student against this
    report's teacher (the evaluations' speeds are fairseq's); a measurement against another teacher is refused."""
    for s in speedups:
        if teacher is not None and s["teacher"] != teacher:
            raise DataError(f"{s['path']}: {s['model']} timed beside '{s['teacher']}', but the report's teacher is "
                            f"'{teacher}'")
    fairseq = {(s["set"], s["model"]): s["speedup_median"] for s in speedups if s["backend"] == "fairseq"}
    for r in rows:
        r["speedup_side_by_side"] = fairseq.get((r["set"], r["model"]))


def first_of_variant(rows: list[dict], variant: str) -> dict | None:
    return next((r for r in rows if r["variant"] == variant), None)


def order_key(r: dict) -> tuple:
    """Teacher first, then the students by name (seeds in numeric order)."""
    stem = r["model"].removesuffix(f"_s{r['seed']}") if r["seed"] is not None else r["model"]
    return r["variant"] != TEACHER, stem, r["seed"] is not None, r["seed"] or 0, r["model"]


def by_set(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per evaluation set (sets in the order given), each ordered by order_key; one row per model and set."""
    sets: dict[str, list[dict]] = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r)
    for name, group in sets.items():
        models = [r["model"] for r in group]
        if len(set(models)) != len(models):
            raise DataError(f"two evaluation results for the same model on set {name}: " + ", ".join(models))
        group.sort(key=order_key)
    return sets


def choose(rows: list[dict] | None) -> dict[str, dict]:
    """The best student of each variant by BLEU on these rows (the choice set's): variant -> row."""
    best: dict[str, dict] = {}
    for r in rows or []:
        if r["variant"] != TEACHER and (r["variant"] not in best or r["bleu"] > best[r["variant"]]["bleu"]):
            best[r["variant"]] = r
    return best


def reference_baseline(rows: list[dict], chosen: dict[str, dict]) -> str | None:
    """The baseline student of every comparison: the one chosen on dev, else the baseline's first seed."""
    if BASELINE in chosen:
        return chosen[BASELINE]["model"]
    baselines = sorted((r for r in rows if r["variant"] == BASELINE), key=order_key)
    return baselines[0]["model"] if baselines else None


def add_fallback_share(rows: list[dict], stats_path: Path | None) -> None:
    """fallback_share of the distillation (work/distill/<dir>/stats.json) on the rows of students on distilled targets."""
    share = None
    if stats_path is not None:
        try:
            share = json.loads(stats_path.read_text(encoding="utf-8"))["fallback_share"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise DataError(f"{stats_path}: no fallback_share of pipeline.distill.merge ({type(err).__name__}: {err})") from None
    elif any(r["targets"] == "distilled" for r in rows):
        log.warning("students on distilled targets, but no --distill-stats: their fallback share is left empty")
    for r in rows:
        r["fallback_share"] = share if r["targets"] == "distilled" else None


def summarize(rows: list[dict], baseline_model: str | None) -> list[dict]:
    """Deltas and speed-ups of one set's rows against its baseline student and teacher."""
    teacher = first_of_variant(rows, TEACHER)
    baseline = next((r for r in rows if r["model"] == baseline_model), None)
    for r in rows:
        r["baseline_model"] = baseline["model"] if baseline else None
        r["delta_bleu_vs_baseline"] = r["bleu"] - baseline["bleu"] if baseline else None
        r["delta_bleu_vs_teacher"] = r["bleu"] - teacher["bleu"] if teacher else None
        r["speedup_vs_teacher"] = r["sent_per_s_beam"] / teacher["sent_per_s_beam"] if teacher else None
    return rows


def add_seed_statistics(rows: list[dict]) -> None:
    """Per (variant, alpha, T) of one set: how many seeds, BLEU and chrF mean and sample sd (sd: two or more)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["alpha"], r["temperature"]), []).append(r)
    for group in groups.values():
        for metric in ("bleu", "chrf"):
            values = [r[metric] for r in group]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else None
            for r in group:
                r["seeds"] = len(group)
                r[f"{metric}_mean_over_seeds"], r[f"{metric}_sd_over_seeds"] = mean, sd


class Files:
    """Hypotheses and references as the evaluations recorded them, each file read once."""

    def __init__(self) -> None:
        self.cache: dict[str, list[str]] = {}

    def lines(self, name: str) -> list[str]:
        if name not in self.cache:
            self.cache[name] = read_lines(name)
        return self.cache[name]


def add_significance(rows: list[dict], settings: Bootstrap, files: Files) -> tuple[str | None, str | None]:
    """Paired bootstrap of every row of one set against its baseline student and its teacher (sacreBLEU's
    PairedTest): p_vs_baseline, p_vs_teacher, the bootstrap mean and 95% CI.

    Returns the test's signature, and a note instead when an evaluation records no hypotheses or reference
    (a JSON not written by pipeline.evaluate): the set then has no significance figures.
    """
    for r in rows:
        r.update(p_vs_baseline=None, p_vs_teacher=None, bleu_bootstrap_mean=None, bleu_ci95=None,
                 bootstrap_samples=settings.samples, bootstrap_seed=settings.seed)
    unrecorded = [r for r in rows if not r["hypotheses"] or not r["reference"]]
    if unrecorded:
        note = (f"No paired bootstrap on {rows[0]['set']}: {unrecorded[0]['path']} records no beam hypotheses file or "
                "reference (keys beam.hypotheses, reference; pipeline.evaluate writes both).")
        log.warning("%s", note)
        return None, note
    teacher = first_of_variant(rows, TEACHER)
    baseline = next((r for r in rows if r["model"] == rows[0]["baseline_model"]), None)
    signature = None
    for key, comparator in (("baseline", baseline), ("teacher", teacher)):
        if comparator is None:
            continue
        refs = files.lines(comparator["reference"])
        for r in rows:
            if files.lines(r["reference"]) != refs:
                raise DataError(f"{r['path']}: reference {r['reference']} differs from {comparator['reference']} "
                                f"({comparator['path']}), both on set {r['set']}")
        others = [r for r in rows if r is not comparator]
        results, signature = paired_bootstrap((comparator["model"], files.lines(comparator["hypotheses"])),
                                              [(r["model"], files.lines(r["hypotheses"])) for r in others], refs, settings)
        for r in rows:
            result = results[r["model"]]
            if abs(result.score - r["bleu"]) > SCORE_TOLERANCE:
                raise DataError(f"{r['hypotheses']}: BLEU {result.score:.4f} against {r['reference']}, but its evaluation "
                                f"{r['path']} says {r['bleu']:.4f}: not the hypotheses that evaluation scored")
            if r is not comparator:
                r[f"p_vs_{key}"] = result.p_value
            r["bleu_bootstrap_mean"], r["bleu_ci95"] = result.mean, result.ci
    return signature, None


def best_rows(chosen: dict[str, dict], report_rows: list[dict], choose_on: str) -> list[dict]:
    """The chosen students' rows on the reported set, with the BLEU they were chosen by."""
    on_report = {r["model"]: r for r in report_rows}
    out = []
    for variant, pick in chosen.items():
        row = dict(on_report.get(pick["model"]) or {"model": pick["model"], "variant": variant, "alpha": pick["alpha"],
                                                     "temperature": pick["temperature"], "seed": pick["seed"]})
        out.append({**row, "chosen_on": choose_on, "chosen_on_bleu": pick["bleu"]})
    return sorted(out, key=order_key)


def summarize_ct2(ct2_rows: list[dict], rows: list[dict]) -> list[dict]:
    """Against the same model decoded by fairseq on the same set, and against the fairseq teacher there;
    by set, then model, then compute type."""
    fairseq = {(r["set"], r["model"]): r for r in rows}
    teachers = {r["set"]: r for r in rows if r["variant"] == TEACHER}
    for r in ct2_rows:
        same, teacher = fairseq.get((r["set"], r["model"])), teachers.get(r["set"])
        r["delta_bleu_vs_fairseq"] = r["bleu"] - same["bleu"] if same else None
        r["speedup_vs_fairseq"] = r["sent_per_s_beam"] / same["sent_per_s_beam"] if same else None
        r["speedup_vs_fairseq_teacher"] = r["sent_per_s_beam"] / teacher["sent_per_s_beam"] if teacher else None
    sets = list(dict.fromkeys(r["set"] for r in rows))
    teacher_names = {r["model"] for r in rows if r["variant"] == TEACHER}
    return sorted(ct2_rows, key=lambda r: (sets.index(r["set"]) if r["set"] in sets else len(sets), r["set"],
                                           r["model"] not in teacher_names, r["model"], r["compute_type"]))


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def p_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def ci(r: dict) -> str:
    return "–" if r.get("bleu_ci95") is None else f"{r['bleu_bootstrap_mean']:.2f} ± {r['bleu_ci95']:.2f}"


def ratio(value: float | None) -> str:
    return fmt(value) + ("×" if value else "")


def table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(cells) + " |" for cells in body)]


def markdown_intro(report_set: str, choose_on: str, sets: list[str], baseline_model: str | None, settings: Bootstrap,
                   signature: str | None) -> list[str]:
    if choose_on not in sets:
        choice = (f"**{choose_on} is not among the evaluated sets ({', '.join(sets)}): no student is chosen** "
                  f"(choosing on {report_set} would tune on it). Add {choose_on} to evaluate.sets.")
    elif choose_on == report_set:
        choice = (f"Choices and results are both on {choose_on} (report.set): the chosen students' figures are not "
                  "held-out results.")
    else:
        choice = (f"Choices on {choose_on}, results on {report_set}: the best student of each variant (its α, T and "
                  f"seed) by {choose_on} BLEU, reported once on {report_set}.")
    if signature is None:
        test = "Significance: no paired bootstrap resampling (no baseline student or teacher, or see the notes below)."
    else:
        test = (f"Significance: sacreBLEU's paired bootstrap resampling, {settings.samples} resamples, seed "
                f"{settings.seed} (`{signature}`), of every model against the baseline student"
                + (f" ({baseline_model})" if baseline_model else " (none evaluated)")
                + " and the teacher: p-values, and the bootstrap mean ± half-width of the 95% confidence interval.")
    return ["# Summary", "", choice, "", test, ""]


def markdown_best(best: list[dict], choose_on: str, report_set: str, speedups: list[dict]) -> list[str]:
    if not best:
        return []
    head = ["variant", "model", "α", "T", "seed", f"{choose_on} BLEU (chosen by)", f"{report_set} BLEU",
            "95% CI", "Δ vs baseline", "p vs baseline", "Δ vs teacher", "p vs teacher",
            "speed-up vs teacher (beam, separate jobs)"]
    if speedups:
        head.append("speed-up vs teacher (beam, side by side)")

    def side_by_side(r: dict) -> list[str]:
        if not speedups:
            return []
        mine = [s for s in speedups if s["model"] == r["model"] and s["set"] == report_set]
        return ["; ".join(f"{backend_label(s)} {s['speedup_median']:.2f}×" for s in mine) or "–"]

    body = [[r["variant"], r["model"], fmt(r["alpha"]), fmt(r["temperature"]), fmt(r["seed"]), fmt(r["chosen_on_bleu"]),
             fmt(r.get("bleu")), ci(r), signed(r.get("delta_bleu_vs_baseline")), p_value(r.get("p_vs_baseline")),
             signed(r.get("delta_bleu_vs_teacher")), p_value(r.get("p_vs_teacher")), ratio(r.get("speedup_vs_teacher")),
             *side_by_side(r)]
            for r in best]
    return [f"## Best student per variant: chosen on {choose_on}, reported on {report_set}", "", *table(head, body), ""]


def markdown_speedups(speedups: list[dict]) -> list[str]:
    """Each student's speed-up timed beside the teacher, per set and backend."""
    if not speedups:
        return []
    head = ["model", "teacher", "backend", "set", "rounds", "teacher sent/s", "student sent/s", "speed-up (median)",
            "min–max over rounds"]
    body = [[s["model"], s["teacher"], backend_label(s), s["set"], str(s["rounds"]), fmt(s["teacher_sent_per_s"], 1),
             fmt(s["student_sent_per_s"], 1), ratio(s["speedup_median"]),
             f"{s['speedup_min']:.2f}–{s['speedup_max']:.2f}×"] for s in speedups]
    return ["## Speed-up against the teacher, timed side by side", "",
            "Each student and the teacher decode the same sentences with beam search in one job, passes alternating "
            "(pipeline.benchmarks.speedup; evaluate.speedup_rounds passes each): a drift of the machine's speed falls "
            "on both. The tables' other speed-ups divide speeds from separate evaluation jobs.", "",
            *table(head, body), ""]


def markdown_set(rows: list[dict], role: str, note: str | None = None) -> list[str]:
    head = ["model", "BLEU", "95% CI", "chrF", "BLEU greedy", "Δ BLEU vs baseline", "p vs baseline",
            "Δ BLEU vs teacher", "p vs teacher", "parameters", "size (MB)", "sent/s greedy", "sent/s beam",
            "speed-up vs teacher (beam)", "distillation fallback"]
    body = [[r["model"], fmt(r["bleu"]), ci(r), fmt(r["chrf"]), fmt(r["bleu_greedy"]), signed(r["delta_bleu_vs_baseline"]),
             p_value(r["p_vs_baseline"]), signed(r["delta_bleu_vs_teacher"]), p_value(r["p_vs_teacher"]),
             fmt(r["parameters"]), fmt(r["size_mb"], 1), fmt(r["sent_per_s_greedy"], 1), fmt(r["sent_per_s_beam"], 1),
             ratio(r["speedup_vs_teacher"]),
             fmt(None if r["fallback_share"] is None else f"{r['fallback_share']:.1%}")] for r in rows]
    return [f"## {rows[0]['set']}{role}", "",
            f"Evaluation set: {rows[0]['set']}; BLEU/chrF with beam search. BLEU signature: `{rows[0]['signature']}`", "",
            *table(head, body), *([""] + [note] if note else []), *markdown_seeds(rows), ""]


def markdown_seeds(rows: list[dict]) -> list[str]:
    """Mean ± sd over the seeds of each (variant, α, T), when some student has several."""
    if all(r["seeds"] < 2 for r in rows):
        return []
    head = ["variant", "α", "T", "seeds", "BLEU mean ± sd", "chrF mean ± sd"]
    body, seen = [], set()
    for r in rows:
        key = (r["variant"], r["alpha"], r["temperature"])
        if r["variant"] == TEACHER or key in seen:
            continue
        seen.add(key)
        spread = [f"{r[f'{m}_mean_over_seeds']:.2f} ± {fmt(r[f'{m}_sd_over_seeds'])}" for m in ("bleu", "chrf")]
        body.append([r["variant"], fmt(r["alpha"]), fmt(r["temperature"]), str(r["seeds"]), *spread])
    return ["", f"Mean ± sample standard deviation over seeds ({rows[0]['set']}):", "", *table(head, body)]


def markdown_ct2(rows: list[dict]) -> list[str]:
    head = ["model", "CTranslate2 compute type", "BLEU", "chrF", "BLEU greedy", "Δ BLEU vs fairseq", "sent/s greedy",
            "sent/s beam", "speed-up vs fairseq (beam)", "speed-up vs fairseq teacher", "model.bin (MB)"]
    lines = ["", f"CTranslate2 decoding of the same models on {rows[0]['set']} (same search settings): what "
             "quantisation costs (Δ BLEU) and buys (speed).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ctype = r["compute_type"] + ("" if r["runs_as"] == r["compute_type"] else f" (runs as {r['runs_as']})")
        ctype += " + vocabulary shortlist" if r.get("vmap") else ""
        delta = None if r["delta_bleu_vs_fairseq"] is None else f"{r['delta_bleu_vs_fairseq']:+.2f}"
        ratios = [fmt(r[k]) + ("×" if r[k] else "") for k in ("speedup_vs_fairseq", "speedup_vs_fairseq_teacher")]
        cells = [r["model"], ctype, fmt(r["bleu"]), fmt(r["chrf"]), fmt(r["bleu_greedy"]), fmt(delta),
                 fmt(r["sent_per_s_greedy"], 1), fmt(r["sent_per_s_beam"], 1), *ratios, fmt(r["model_bin_mb"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_bleu_vs_speed(rows: list[dict], path: Path, ct2_rows: list[dict] | None = None) -> None:
    """Every model a labelled point (fairseq); CTranslate2 decodings, if any, as hollow points joined to it."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {}
    for r in rows:
        marker = "*" if r["variant"] == TEACHER else "o"
        point = ax.scatter(r["sent_per_s_beam"], r["bleu"], s=120 if marker == "*" else 50, marker=marker)
        colors[r["model"]] = point.get_facecolor()[0]
        ax.annotate(r["model"], (r["sent_per_s_beam"], r["bleu"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    by_name = {r["model"]: r for r in rows}
    for r in ct2_rows or []:
        color = colors.get(r["model"], "gray")
        ax.scatter(r["sent_per_s_beam"], r["bleu"], s=50, facecolors="none", edgecolors=[color])
        if r["model"] in by_name:
            base = by_name[r["model"]]
            ax.plot([base["sent_per_s_beam"], r["sent_per_s_beam"]], [base["bleu"], r["bleu"]], color=color,
                    linewidth=0.8, linestyle=":")
        ax.annotate(f"ct2 {r['compute_type']}", (r["sent_per_s_beam"], r["bleu"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=7, color=color)
    ax.set_xlabel("beam decoding speed (sentences/s)" + ("; hollow: CTranslate2" if ct2_rows else ""))
    ax.set_ylabel("BLEU")
    ax.set_title(f"Quality versus speed ({rows[0]['set']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bleu_vs_alpha(sets: dict[str, list[dict]], primary: str, secondary: str | None, baseline_model: str | None,
                       path: Path) -> None:
    """BLEU of the word-KD students against α on `primary` (dev: where choices are made), mean over seeds
    with their sd as error bars; `secondary` (test), if given, beside it as a dashed, labelled series."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors: dict[tuple[str, float], str] = {}  # a (variant, T) has one colour on both sets
    for set_name, style in ((primary, "-"), (secondary, "--")):
        if set_name is None or set_name not in sets:
            continue
        groups: dict[tuple[str, float], dict[float, list[float]]] = {}
        for r in sets[set_name]:
            if r["alpha"] is not None:
                groups.setdefault((r["variant"], r["temperature"]), {}).setdefault(r["alpha"], []).append(r["bleu"])
        for (variant, t), by_alpha in sorted(groups.items()):
            alphas = sorted(by_alpha)
            means = [statistics.fmean(by_alpha[a]) for a in alphas]
            sds = [statistics.stdev(by_alpha[a]) if len(by_alpha[a]) > 1 else 0.0 for a in alphas]
            line = ax.errorbar(alphas, means, yerr=sds if any(sds) else None, marker="o", linestyle=style, capsize=3,
                               color=colors.get((variant, t)), mfc="none" if set_name != primary else None,
                               label=f"{variant}, T={t:g} ({set_name})")
            colors.setdefault((variant, t), line.lines[0].get_color())
        if set_name == primary:
            for variant, line in ((TEACHER, "--"), (BASELINE, ":")):
                row = next((r for r in sets[set_name] if r["variant"] == variant
                            and (variant == TEACHER or r["model"] == baseline_model)), None)
                if row:
                    ax.axhline(row["bleu"], linestyle=line, color="gray", label=f"{row['model']} ({set_name})")
    ax.set_xlabel("α (weight of cross-entropy; 1 − α on the KL term)")
    ax.set_ylabel("BLEU" + (" (mean ± sd over seeds)" if any(
        r["seeds"] > 1 for rows in sets.values() for r in rows if "seeds" in r) else ""))
    ax.set_xlim(-0.05, 1.05)
    ax.set_title(f"BLEU versus α on {primary}" + (f" (choices); {secondary} dashed" if secondary else ""))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """(update, value) series from a fairseq JSON progress file: the training objective (each criterion's own
    loss) and the validation NLL of the references, the one figure every criterion logs alike (word_kd's
    validation loss mixes in the KL term, so its losses are not comparable with CE's)."""
    curves: dict[str, list[tuple[int, float]]] = {"train": [], "valid": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        phase = record.get("phase")
        if phase == "train_inner":
            curves["train"].append((int(float(record["num_updates"])), float(record["loss"])))
        elif phase == "valid":
            value = record.get("valid_nll_loss", record["valid_loss"])
            curves["valid"].append((int(float(record["valid_num_updates"])), float(value)))
    return curves


def plot_curves(curve_files: list[Path], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for f in sorted(curve_files):
        curves = read_curves(f)
        for ax, phase in zip(axes, ("train", "valid"), strict=True):
            points = sorted(dict(curves[phase]).items())  # a resumed run repeats updates: keep the last
            if points:
                ax.plot([u for u, _ in points], [loss for _, loss in points], marker="." if phase == "valid" else None,
                        label=f.stem)
    for ax, phase in zip(axes, ("training loss (each model's objective)", "validation NLL of the references"),
                         strict=True):
        ax.set_xlabel("updates")
        ax.set_ylabel("bits per token")
        ax.set_title(phase)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=Path, nargs="+", required=True,
                        help="evaluation JSON files, one per model and set (every set: a table each)")
    parser.add_argument("--set", dest="report_set", default="test",
                        help="the set the results are reported on (config report.set)")
    parser.add_argument("--choose-on", default=CHOOSE_ON, help="the set the best student of each variant is chosen on")
    parser.add_argument("--bootstrap-samples", type=int, default=Bootstrap.samples,
                        help="paired bootstrap resamples (config report.bootstrap.samples)")
    parser.add_argument("--bootstrap-seed", type=int, default=Bootstrap.seed,
                        help="the resampling's seed, > 0 (config report.bootstrap.seed)")
    parser.add_argument("--curves", type=Path, nargs="*", default=[], help="results/<experiment>/train/<model>.jsonl files")
    parser.add_argument("--csv", type=Path, required=True, help="every model on every set (a set column)")
    parser.add_argument("--best-csv", type=Path, help="the students chosen on --choose-on, on --set")
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="directory for the PNG plots")
    parser.add_argument("--ct2-evals", type=Path, nargs="*", default=[],
                        help="CTranslate2 evaluation JSON files (results/<experiment>/eval/<model>/<set>.ct2-<type>.json)")
    parser.add_argument("--ct2-csv", type=Path, help="their table as CSV (with --ct2-evals)")
    parser.add_argument("--distill-stats", type=Path, help="work/distill/<dir>/stats.json: the fallback share of distilled students")
    parser.add_argument("--speedups", type=Path, nargs="*", default=[],
                        help="pipeline.benchmarks.speedup results (results/<experiment>/eval/<model>/<set>.speedup-<backend>.json)")
    parser.add_argument("--speedup-csv", type=Path, help="their table as CSV (with --speedups)")
    args = parser.parse_args()
    if args.bootstrap_samples < 1 or args.bootstrap_seed < 1:
        parser.error("--bootstrap-samples and --bootstrap-seed must be positive (sacreBLEU takes seed 0 for unseeded)")
    settings = Bootstrap(args.bootstrap_samples, args.bootstrap_seed)
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # not two lines per model and test

    rows = [load_row(p) for p in args.evals]
    add_fallback_share(rows, args.distill_stats)
    sets = by_set(rows)
    if args.report_set not in sets:
        raise DataError(f"--set {args.report_set}: no evaluation of that set among --evals (sets: {', '.join(sets)})")
    chosen = choose(sets.get(args.choose_on))
    baseline_model = reference_baseline(rows, chosen)
    chosen_models = {r["model"] for r in chosen.values()}
    files, signature, notes = Files(), None, {}
    for name, group in sets.items():
        summarize(group, baseline_model)
        add_seed_statistics(group)
        set_signature, notes[name] = add_significance(group, settings, files)
        signature = signature or set_signature
        for r in group:
            r["chosen_on"] = args.choose_on if r["model"] in chosen_models else None
    order = [args.report_set] + [name for name in sets if name != args.report_set]
    ordered = [r for name in order for r in sets[name]]
    ct2_rows = summarize_ct2([load_ct2_row(p) for p in args.ct2_evals], ordered)
    speedups = sorted((s for p in args.speedups for s in load_speedup_rows(p)),
                      key=lambda s: (order.index(s["set"]) if s["set"] in order else len(order), s["model"],
                                     s["backend"] != "fairseq", s["compute_type"] or ""))
    teacher_row = first_of_variant(ordered, TEACHER)
    add_side_by_side(ordered, speedups, teacher_row["model"] if teacher_row else None)
    best = best_rows(chosen, sets[args.report_set], args.choose_on)

    write_csv(args.csv, COLUMNS, ordered)
    if args.best_csv:
        write_csv(args.best_csv, BEST_COLUMNS, best)
    if args.ct2_csv:
        write_csv(args.ct2_csv, CT2_COLUMNS, ct2_rows)
    if args.speedup_csv:
        write_csv(args.speedup_csv, SPEEDUP_COLUMNS, speedups)
    md = markdown_intro(args.report_set, args.choose_on, list(sets), baseline_model, settings, signature)
    md += markdown_best(best, args.choose_on, args.report_set, speedups)
    md += markdown_speedups(speedups)
    for name in order:
        roles = [role for role, set_name in (("results", args.report_set), ("choices", args.choose_on)) if name == set_name]
        md += markdown_set(sets[name], f" ({' and '.join(roles)})" if roles else "", notes[name])
    for name in order:
        group = [r for r in ct2_rows if r["set"] == name]
        md += markdown_ct2(group) if group else []
    write_lines(args.md, md)
    args.plots.mkdir(parents=True, exist_ok=True)
    report_ct2 = [r for r in ct2_rows if r["set"] == args.report_set]
    plot_bleu_vs_speed(sets[args.report_set], args.plots / "bleu_vs_speed.png", report_ct2)
    has_choice_set = args.choose_on in sets
    plot_bleu_vs_alpha(sets, args.choose_on if has_choice_set else args.report_set,
                       args.report_set if has_choice_set and args.choose_on != args.report_set else None,
                       baseline_model, args.plots / "bleu_vs_alpha.png")
    plot_curves(args.curves, args.plots / "training_curves.png")
    log.info("summary of %d models on %d sets: %s", len(sets[args.report_set]), len(sets), args.md)


if __name__ == "__main__":
    run(main)
