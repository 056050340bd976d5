"""Several experiments side by side: their summaries (results/<experiment>/summary.csv) in one table.

    python -m pipeline.compare --summaries results/*/summary.csv --csv results/compare.csv --md results/compare.md

Each summary is the report's (pipeline.report) table of one experiment; the comparison adds an
experiment column (the summary's folder name) in front of the report's columns and writes one
Markdown table per evaluation set, with the report's formatting. Nothing is recomputed: the figures,
choices and significance tests are each experiment's own.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from pipeline.cli import run
from pipeline.corpus import write_lines
from pipeline.errors import DataError
from pipeline.report import COLUMNS, fmt, p_value, signed, table, write_csv

log = logging.getLogger("pipeline.compare")
COMPARE_COLUMNS = ["experiment", *COLUMNS]
MD_HEAD = ["experiment", "model", "variant", "alpha", "T", "seed", "BLEU", "chrF", "Δ BLEU vs baseline",
           "p vs baseline", "Δ BLEU vs teacher", "sent/s (beam)", "parameters"]


def number(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def read_summary(path: Path) -> list[dict]:
    """One experiment's summary rows, each with its experiment (the folder's name)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [name for name in ("set", "model", "bleu") if name not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a report summary (no column {', '.join(missing)})")
            rows = list(reader)
    except OSError as err:
        raise DataError(f"{path}: not readable ({err})") from None
    return [{"experiment": path.parent.name, **row} for row in rows]


def markdown(rows: list[dict]) -> list[str]:
    sets = list(dict.fromkeys(r["set"] for r in rows))
    experiments = list(dict.fromkeys(r["experiment"] for r in rows))
    md = ["# Experiments compared", "", f"Experiments: {', '.join(experiments)}. Each row is the experiment's own "
          "summary (results/<experiment>/summary.csv): BLEU/chrF of beam search, comparisons within the experiment.", ""]
    for name in sets:
        body = [[r["experiment"], r["model"], r["variant"], r["alpha"] or "–", r["temperature"] or "–", r["seed"] or "–",
                 fmt(number(r["bleu"])), fmt(number(r["chrf"])), signed(number(r["delta_bleu_vs_baseline"])),
                 p_value(number(r["p_vs_baseline"])), signed(number(r["delta_bleu_vs_teacher"])),
                 fmt(number(r["sent_per_s_beam"]), 1), r["parameters"] or "–"]
                for r in rows if r["set"] == name]
        md += [f"## {name}", "", *table(MD_HEAD, body), ""]
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summaries", type=Path, nargs="+", required=True,
                        help="results/<experiment>/summary.csv files, one per experiment")
    parser.add_argument("--csv", type=Path, required=True, help="every experiment's rows, with an experiment column")
    parser.add_argument("--md", type=Path, required=True, help="the same as Markdown, a table per set")
    args = parser.parse_args()
    names = [path.parent.name for path in args.summaries]
    if len(set(names)) != len(names):
        raise DataError(f"--summaries: two summaries of one experiment name ({', '.join(map(str, args.summaries))})")
    rows = [row for path in args.summaries for row in read_summary(path)]
    write_csv(args.csv, COMPARE_COLUMNS, rows)
    write_lines(args.md, markdown(rows))
    log.info("%d rows of %d experiments: %s", len(rows), len(names), args.md)


if __name__ == "__main__":
    run(main)
