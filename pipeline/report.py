"""The comparison every run ends with: one row per model, and the plots that show it.

    python -m pipeline.report --evals results/eval/*/test.json --curves results/train/*.jsonl \
        --csv results/summary.csv --md results/summary.md --plots results/plots \
        [--ct2-evals results/eval/*/test.ct2-*.json --ct2-csv results/summary_ct2.csv]
        [--distill-stats results/distill/stats.json]

BLEU/chrF are beam-search scores on the evaluation set given; speeds are sentences per second.
Each evaluation carries its model's spec.json (key "spec", written by the workflow beside model.pt):
variant, alpha and temperature come from there. Deltas are against the baseline student and the
teacher (by variant) when those models are present.
CTranslate2 evaluations (evaluate.backends) add a second table and their points in the speed plot:
per model and compute type, BLEU and speed against the same model under fairseq (what quantisation
costs and buys) and the speed-up against the fairseq teacher.
Students on distilled targets (spec "targets": "distilled") show the distillation's fallback share
(results/distill/stats.json "fallback_share": pairs whose target the filters replaced by the reference
or dropped): a student with a high share learnt mostly the references.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.cli import run  # noqa: E402
from pipeline.corpus import write_lines  # noqa: E402
from pipeline.errors import DataError  # noqa: E402

log = logging.getLogger("pipeline.report")
TEACHER, BASELINE = "teacher", "baseline"  # variants (spec.json): the rows the deltas compare with
COLUMNS = [
    "model", "variant", "alpha", "temperature", "bleu", "chrf", "bleu_greedy", "delta_bleu_vs_baseline",
    "delta_bleu_vs_teacher", "parameters", "size_mb", "sent_per_s_greedy", "sent_per_s_beam", "speedup_vs_teacher",
    "fallback_share",
]
CT2_COLUMNS = [
    "model", "compute_type", "runs_as", "vmap", "bleu", "chrf", "bleu_greedy", "delta_bleu_vs_fairseq", "sent_per_s_greedy",
    "sent_per_s_beam", "speedup_vs_fairseq", "speedup_vs_fairseq_teacher", "model_bin_mb",
]
def describe(result: dict, path: Path) -> tuple[str, float | None, float | None]:
    """(variant, alpha, temperature) from the evaluation's copy of the model's spec.json (key "spec")."""
    spec = result.get("spec")
    if not isinstance(spec, dict) or "variant" not in spec:
        raise DataError(f"{path}: no model spec (key \"spec\", from work/models/<model>/spec.json): "
                          "evaluate the model again with pipeline.evaluate --spec")
    return spec["variant"], spec.get("alpha"), spec.get("temperature")


def load_row(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable evaluation result ({err})") from None
    variant, alpha, temperature = describe(result, path)
    size = result.get("model_size", {})
    return {
        "model": result["model"],
        "variant": variant,
        "alpha": alpha,
        "temperature": temperature,
        "bleu": result["beam"]["bleu"]["score"],
        "chrf": result["beam"]["chrf"]["score"],
        "bleu_greedy": result["greedy"]["bleu"]["score"],
        "parameters": size.get("parameters"),
        "size_mb": size.get("stripped_checkpoint_bytes", 0) / 1e6,
        "sent_per_s_greedy": result["greedy"]["speed"]["sentences_per_s"],
        "sent_per_s_beam": result["beam"]["speed"]["sentences_per_s"],
        "signature": result["beam"]["bleu"]["signature"],
        "set": result["set"],
        "targets": result["spec"].get("targets"),
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


def first_of_variant(rows: list[dict], variant: str) -> dict | None:
    return next((r for r in rows if r["variant"] == variant), None)


def summarize_ct2(ct2_rows: list[dict], rows: list[dict]) -> list[dict]:
    """Against the same model decoded by fairseq, and against the fairseq teacher; by model, then compute type."""
    fairseq = {r["model"]: r for r in rows}
    teacher = first_of_variant(rows, TEACHER)
    for r in ct2_rows:
        same = fairseq.get(r["model"])
        r["delta_bleu_vs_fairseq"] = r["bleu"] - same["bleu"] if same else None
        r["speedup_vs_fairseq"] = r["sent_per_s_beam"] / same["sent_per_s_beam"] if same else None
        r["speedup_vs_fairseq_teacher"] = r["sent_per_s_beam"] / teacher["sent_per_s_beam"] if teacher else None
    teachers = {r["model"] for r in rows if r["variant"] == TEACHER}
    return sorted(ct2_rows, key=lambda r: (r["model"] not in teachers, r["model"], r["compute_type"]))


def summarize(rows: list[dict]) -> list[dict]:
    """Add deltas and speed-ups; teacher first, then the students by name."""
    by_name = {r["model"]: r for r in rows}
    if len(by_name) != len(rows):
        raise DataError("two evaluation results for the same model: " + ", ".join(r["model"] for r in rows))
    teacher, baseline = first_of_variant(rows, TEACHER), first_of_variant(rows, BASELINE)
    for r in rows:
        r["delta_bleu_vs_baseline"] = r["bleu"] - baseline["bleu"] if baseline else None
        r["delta_bleu_vs_teacher"] = r["bleu"] - teacher["bleu"] if teacher else None
        r["speedup_vs_teacher"] = r["sent_per_s_beam"] / teacher["sent_per_s_beam"] if teacher else None
    return sorted(rows, key=lambda r: (r["variant"] != TEACHER, r["model"]))


def add_fallback_share(rows: list[dict], stats_path: Path | None) -> None:
    """fallback_share of the distillation (results/distill/stats.json) on the rows of students on distilled targets."""
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


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(rows: list[dict]) -> list[str]:
    head = ["model", "BLEU", "chrF", "BLEU greedy", "Δ BLEU vs baseline", "Δ BLEU vs teacher", "parameters",
            "size (MB)", "sent/s greedy", "sent/s beam", "speed-up vs teacher (beam)", "distillation fallback"]
    lines = [f"Evaluation set: {rows[0]['set']}; BLEU/chrF with beam search. BLEU signature: `{rows[0]['signature']}`",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        delta = [None if r[k] is None else f"{r[k]:+.2f}" for k in ("delta_bleu_vs_baseline", "delta_bleu_vs_teacher")]
        cells = [r["model"], fmt(r["bleu"]), fmt(r["chrf"]), fmt(r["bleu_greedy"]), fmt(delta[0]), fmt(delta[1]),
                 fmt(r["parameters"]), fmt(r["size_mb"], 1), fmt(r["sent_per_s_greedy"], 1),
                 fmt(r["sent_per_s_beam"], 1), fmt(r["speedup_vs_teacher"]) + ("×" if r["speedup_vs_teacher"] else ""),
                 fmt(None if r["fallback_share"] is None else f"{r['fallback_share']:.1%}")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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


def plot_bleu_vs_alpha(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for r in rows:
        if r["alpha"] is not None:
            groups.setdefault((r["variant"], r["temperature"]), []).append((r["alpha"], r["bleu"]))
    for (variant, t), points in sorted(groups.items()):
        points.sort()
        ax.plot([a for a, _ in points], [b for _, b in points], marker="o", label=f"{variant}, T={t:g}")
    for variant, style in ((TEACHER, "--"), (BASELINE, ":")):
        row = first_of_variant(rows, variant)
        if row:
            ax.axhline(row["bleu"], linestyle=style, color="gray", label=row["model"])
    ax.set_xlabel("α (weight of cross-entropy; 1 − α on the KL term)")
    ax.set_ylabel("BLEU")
    ax.set_xlim(-0.05, 1.05)
    ax.set_title("BLEU versus α")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
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
    parser.add_argument("--evals", type=Path, nargs="+", required=True, help="evaluation JSON files, one per model")
    parser.add_argument("--curves", type=Path, nargs="*", default=[], help="results/train/<model>.jsonl files")
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="directory for the PNG plots")
    parser.add_argument("--ct2-evals", type=Path, nargs="*", default=[],
                        help="CTranslate2 evaluation JSON files (results/eval/<model>/<set>.ct2-<type>.json)")
    parser.add_argument("--ct2-csv", type=Path, help="their table as CSV (with --ct2-evals)")
    parser.add_argument("--distill-stats", type=Path, help="results/distill/stats.json: the fallback share of distilled students")
    args = parser.parse_args()
    rows = summarize([load_row(p) for p in args.evals])
    add_fallback_share(rows, args.distill_stats)
    ct2_rows = summarize_ct2([load_ct2_row(p) for p in args.ct2_evals], rows)
    write_csv(args.csv, COLUMNS, rows)
    write_lines(args.md, markdown(rows) + (markdown_ct2(ct2_rows) if ct2_rows else []))
    if args.ct2_csv:
        write_csv(args.ct2_csv, CT2_COLUMNS, ct2_rows)
    args.plots.mkdir(parents=True, exist_ok=True)
    plot_bleu_vs_speed(rows, args.plots / "bleu_vs_speed.png", ct2_rows)
    plot_bleu_vs_alpha(rows, args.plots / "bleu_vs_alpha.png")
    plot_curves(args.curves, args.plots / "training_curves.png")
    log.info("summary of %d models: %s", len(rows), args.md)


if __name__ == "__main__":
    run(main)
