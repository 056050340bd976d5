"""Choose a model's length penalty on dev: beam-decode the set once per candidate, keep the best BLEU.

    python -m pipeline.lenpen --model work/models/<model>-<key>/model.pt --name <model> --set dev --split dev \
        --data work/data/<dir>/bin --ref work/data/<dir>/raw/dev.en --spm work/data/<dir>/spm/spm.model \
        --candidates 1.0 1.3 1.6 2.0 --json results/<experiment>/eval/<model>/lenpen.json [search and batch flags]

Small models trained on short targets stop early: their beam output is shorter than the references and
BLEU's brevity penalty takes points that the n-gram precisions earned. fairseq's length penalty (the
beam's scores divided by length ** lenpen; CTranslate2 the same) moves that per model, so it is chosen
per model, on dev, and the test set is decoded once with the choice (`--lenpen-from` of every decoding
CLI). The JSON keeps every candidate's BLEU, chrF, brevity penalty and lengths beside the choice
("lenpen"): the highest dev BLEU, the first listed on a tie. Decoded with the evaluation's backend and
search except the length penalty; beam only (greedy search has no length penalty); not timed.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.cli import run
from pipeline.corpus import write_lines
from pipeline.decoding import SearchOptions, add_decoding_args, backend_from_args
from pipeline.decoding.options import LENPEN_KEY
from pipeline.errors import ConfigError
from pipeline.evaluate import add_set_args, best_texts, open_set, score

log = logging.getLogger("pipeline.lenpen")


def choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the highest BLEU; on a tie the first listed (order of --candidates)."""
    if not candidates:
        raise ConfigError("no length penalty candidates to choose from")
    return max(candidates, key=lambda c: c["bleu"])  # max keeps the first of equal keys


def check_candidates(values: list[float]) -> list[float]:
    if len(set(values)) != len(values):
        raise ConfigError(f"--candidates {' '.join(map(str, values))}: each length penalty once")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fairseq checkpoint(s), ':'-separated (required with --backend fairseq)")
    parser.add_argument("--name", help="model name in the JSON (default: the checkpoint's directory name)")
    add_set_args(parser)
    parser.add_argument("--candidates", type=float, nargs="+", required=True, help="length penalties to try")
    parser.add_argument("--json", type=Path, required=True, help="write the candidates' scores and the choice here")
    parser.add_argument("--hyps-dir", type=Path, help="also write each candidate's hypotheses here (<set>.lp<value>.txt)")
    add_decoding_args(parser, nbest=False)
    args = parser.parse_args()
    values = check_candidates(args.candidates)

    options = SearchOptions.from_args(args)
    backend = backend_from_args(args)
    evalset = open_set(args, backend)
    candidates = []
    for value in values:
        decoded = backend.decode(evalset.lines, replace(options, lenpen=value))
        hyps = best_texts(decoded, evalset.codec)
        if args.hyps_dir:
            write_lines(args.hyps_dir / f"{args.set_name}.lp{value:g}.txt", hyps)
        scores = score(hyps, evalset.refs)
        bleu = scores["bleu"]
        candidates.append({"lenpen": value, "bleu": bleu["score"], "chrf": scores["chrf"]["score"], "bp": bleu["bp"],
                           "sys_len": bleu["sys_len"], "ref_len": bleu["ref_len"]})
        log.info("lenpen %g: BLEU %.2f chrF %.2f (BP %.3f, %d / %d)", value, bleu["score"], scores["chrf"]["score"],
                 bleu["bp"], bleu["sys_len"], bleu["ref_len"])
    best = choose(candidates)
    record = backend.model_record()
    result = {
        "model": args.name or Path(record["checkpoint"]).parent.name,
        **record,
        "set": args.set_name,
        "source": evalset.source,
        "reference": str(args.ref),
        "metric": "bleu",
        "search": {key: val for key, val in options.search().items() if key != "lenpen"},
        "signature": scores["bleu"]["signature"],
        "candidates": candidates,
        LENPEN_KEY: best["lenpen"],
    }
    write_lines(args.json, [json.dumps(result, indent=2)])
    log.info("%s: length penalty %g chosen on %s (BLEU %.2f)", result["model"], best["lenpen"], args.set_name, best["bleu"])


if __name__ == "__main__":
    run(main)
