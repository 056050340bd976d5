"""Export a model for deployment: a self-contained CTranslate2 directory (int8) with its BLEU and speed.

    python -m pipeline.export --model work/models/student_seq_kd-<key>/model.pt --name student_seq_kd \
        --out export/default/student_seq_kd --data work/data/<dir>/bin --spm work/data/<dir>/spm/spm.model \
        --src-pieces work/data/<dir>/spm/test.de --ref work/data/<dir>/raw/test.en --set test \
        [--quantization int8] [--compute-types auto float32] [--fairseq-eval results/<experiment>/eval/student_seq_kd/test.json]
        [--spec work/models/student_seq_kd-<key>/spec.json]

The directory holds CTranslate2's model (model.bin, config.json, vocabulary), the SentencePiece
model, pipeline.json (languages, normalisation, settings, the measurements) and a README with the
BLEU and speed of the exported weights themselves, measured here on the evaluation set with each
compute type asked for (beside fairseq's figures for the same checkpoint when --fairseq-eval is
given), and with --spec the model's settings (its spec.json, also in pipeline.json under "spec").
It translates raw text without fairseq or torch:

    python -m pipeline.translate --model export/default/student_seq_kd < input.de > output.en
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.cli import run
from pipeline.corpus import read_lines
from pipeline.decoding import SearchOptions, add_decoding_args, open_backend
from pipeline.decoding.batching import ct2_batch
from pipeline.decoding.compute import COMPUTE_TYPES, DEFAULT_COMPUTE_TYPE, parse_compute_type, resolve_compute_type
from pipeline.decoding.convert import convert
from pipeline.decoding.ct2_backend import ct2_device
from pipeline.decoding.ct2_dir import META, SPM, VMAP
from pipeline.errors import BackendError, DataError
from pipeline.spm import TextCodec

log = logging.getLogger("pipeline.export")


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def measure(model_dir: Path, compute_type: str, lines: list[str], refs: list[str], codec: TextCodec,
            options: SearchOptions, threads: int | None, inter: int | None, intra: int | None, cpu: bool,
            speed_runs: int = 1) -> dict[str, Any]:
    """BLEU/chrF and speed of the directory's model with one compute type (after a warm-up batch, fastest of speed_runs)."""
    from pipeline.evaluate import (  # sacreBLEU scoring and timing as in the evaluation stage
        best_texts,
        fastest_of,
        score,
    )

    backend = open_backend(model_dir, compute_type=compute_type, threads=threads, inter_threads=inter,
                           intra_threads=intra, cpu=cpu)
    decoded, _ = fastest_of(lambda: backend.decode(lines, options, warmup=True), speed_runs)
    hyps = best_texts(decoded, codec)
    scores = score(hyps, refs)
    stats = decoded.stats
    log.info("%s: BLEU %.2f, %.1f sent/s", backend.describe_device(), scores["bleu"]["score"], stats.sentences_per_s)
    return {"runtime": backend.runtime_info(), "bleu": scores["bleu"]["score"], "chrf": scores["chrf"]["score"],
            "bleu_signature": scores["bleu"]["signature"], "speed": {**stats.as_dict(), "runs": speed_runs}}


def fairseq_figures(path: Path | None) -> dict[str, Any] | None:
    """BLEU and speed of the fairseq checkpoint from its evaluation JSON (pipeline.evaluate), if given."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        beam = data["beam"]
        return {"bleu": beam["bleu"]["score"], "speed": beam["speed"], "runtime": data.get("runtime", {}),
                "checkpoint_bytes": (data.get("model_size") or {}).get("stripped_checkpoint_bytes")}
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not an evaluation result of pipeline.evaluate ({err})") from None


def readme(name: str, meta: dict[str, Any], results: dict[str, dict[str, Any]], fairseq: dict[str, Any] | None,
           size: int, set_name: str, sentences: int) -> str:
    gen = meta["decoding"]
    rows = []
    if fairseq is not None:
        s = fairseq["speed"]
        rows.append(f"| fairseq (checkpoint, reference) | {fairseq['runtime'].get('device', '?')} | {fairseq['bleu']:.2f} "
                    f"| {s['sentences_per_s']:.1f} | {s['target_tokens_per_s']:.0f} | 1.00× |")
    for ctype, r in results.items():
        s, rt = r["speed"], r["runtime"]
        ratio = (f"{s['sentences_per_s'] / fairseq['speed']['sentences_per_s']:.2f}×"
                 if fairseq and fairseq["speed"].get("sentences_per_s") else "–")
        runs_as = "" if rt["compute_type"] == rt["requested_compute_type"] else f", runs as {rt['compute_type']}"
        label = f"CTranslate2 {rt['requested_compute_type']}" + (f" (auto{runs_as})" if ctype == "auto" else
                                                                  f" ({runs_as[2:]})" if runs_as else "")
        rows.append(f"| {label} | {rt['device']}, {rt['inter_threads']}×{rt['intra_threads']} threads | {r['bleu']:.2f} "
                    f"| {s['sentences_per_s']:.1f} | {s['target_tokens_per_s']:.0f} | {ratio} |")
    default = results.get("auto", next(iter(results.values())))["runtime"]["requested_compute_type"]
    stripped = (fairseq or {}).get("checkpoint_bytes")
    checkpoint = f"; the stripped fairseq checkpoint: {stripped / 1e6:.1f} MB" if stripped else ""
    spec = meta.get("spec")
    model_spec = ("\n\nModel settings (its spec.json):\n\n" + "\n".join(f"- {key}: {json.dumps(value)}" for key, value in spec.items())
                  if spec else "")
    vmap = bool(meta.get("use_vmap"))
    shortlist = (f"\n\nDecoding uses the vocabulary shortlist `{VMAP}` (built from the training corpus by "
                 "`pipeline.vmap`): each batch is scored against the target pieces its source pieces map to, which is "
                 "faster and can change the output. The figures below are with it.") if vmap else ""
    return f"""# {name}: CTranslate2 export

A {meta['source_lang']}→{meta['target_lang']} Transformer exported from `{meta['checkpoint']}` with
CTranslate2 {meta['ctranslate2']}: weights stored as **{meta['quantization']}** ({size / 1e6:.1f} MB for this
whole directory{checkpoint}). It runs without fairseq or torch.{model_spec}

## Use

    python -m pipeline.translate --model {meta.get('export_dir', 'DIR')} < input.{meta['source_lang']} > output.{meta['target_lang']}

(from a checkout of this repository: it needs the `pipeline` package, `ctranslate2`, `sentencepiece`
and `sacremoses`). Raw text in, raw text out: punctuation is Moses-normalised
({'on' if meta.get('normalize_punctuation', True) else 'off'}), SentencePiece-encoded with `{SPM}`,
decoded, then SentencePiece-decoded and Moses-detokenised.{shortlist} `--compute-type` picks the computation
(default auto: `{meta.get('compute_type', 'auto')}` of {META}, {default} on the device measured; defaults when
auto: {', '.join(f'{k} {v}' for k, v in DEFAULT_COMPUTE_TYPE.items())}); `--beam`,
`--threads`, `--inter-threads`, `--intra-threads` as in `--help`. From Python:

    import ctranslate2, sentencepiece
    translator = ctranslate2.Translator("DIR", compute_type="{default}")
    sp = sentencepiece.SentencePieceProcessor(model_file="DIR/{SPM}")
    out = translator.translate_batch([sp.encode(text, out_type=str)], beam_size={gen['beam']}{", use_vmap=True" if vmap else ""})
    print(sp.decode(out[0].hypotheses[0]))   # (without the Moses steps of pipeline.translate)

## Quality and speed

{set_name} ({sentences} sentences), beam {gen['beam']}, length penalty {gen['lenpen']}, cap
{gen['max_len_a']} × source + {gen['max_len_b']}, batches of {gen['max_tokens'] or '-'} tokens /
{gen['batch_size'] or '-'} sentences; BLEU by sacreBLEU on detokenised output ({next(iter(results.values()))['bleu_signature']}).
Measured when exported on {platform.machine()}, {os.cpu_count()} CPUs visible; speeds after a warm-up batch
(the fastest of {next(iter(results.values()))['speed'].get('runs', 1)} passes).

| decoder | device | BLEU | sentences/s | target tokens/s | vs fairseq |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Files

`model.bin`, `config.json`, `shared_vocabulary.json` (or source/target vocabularies): the CTranslate2
model; `{SPM}`: the SentencePiece model;{f" `{VMAP}`: the vocabulary shortlist;" if vmap else ""} `{META}`: languages, settings and these measurements.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", type=Path, required=True, help="fairseq checkpoint")
    parser.add_argument("--name", help="model name (default: the checkpoint's directory name)")
    parser.add_argument("--spec", type=Path, help="the model's spec.json: into pipeline.json (\"spec\"), the README and the log")
    parser.add_argument("--out", type=Path, required=True, help="the export directory (replaced)")
    parser.add_argument("--data", type=Path, help="dictionaries (default: from the checkpoint)")
    parser.add_argument("--spm", type=Path, help="SentencePiece model (default: beside the checkpoint, else from the data directory)")
    parser.add_argument("--src-pieces", type=Path, required=True, help="spm-encoded evaluation source")
    parser.add_argument("--ref", type=Path, required=True, help="raw reference text")
    parser.add_argument("--set", dest="set_name", default="test", help="evaluation set name for the README")
    parser.add_argument("--quantization", default="int8", choices=COMPUTE_TYPES, help="weights as stored")
    parser.add_argument("--compute-types", nargs="+", default=["auto", "float32"],
                        help="compute types to measure (auto: --compute-type's for the device)")
    parser.add_argument("--fairseq-eval", type=Path, help="the checkpoint's evaluation JSON, for the comparison")
    parser.add_argument("--no-normalize", action="store_true", help="the data stage did not normalise punctuation")
    parser.add_argument("--vmap", type=Path, help="vocabulary shortlist (pipeline.vmap) shipped and used by default")
    # --compute-type: the directory's default (one type or one per device), measured as "auto"
    add_decoding_args(parser, nbest=False, fp16=False, backend=False, vmap=False, speed_runs=True)
    args = parser.parse_args()

    name = args.name or args.model.parent.name
    from pipeline.evaluate import read_spec

    spec = read_spec(args.spec) if args.spec else None
    options = SearchOptions.from_args(args)
    lines, refs = read_lines(args.src_pieces), read_lines(args.ref)
    if len(lines) != len(refs):
        raise DataError(f"{args.ref}: {len(refs)} reference lines but {args.src_pieces} has {len(lines)}")
    fairseq = fairseq_figures(args.fairseq_eval)
    began = time.perf_counter()
    parse_compute_type(args.compute_type)  # a bad value fails before the conversion
    convert(args.model, args.out, data_dir=args.data, spm=args.spm, quantization=args.quantization,
            extra_meta={"name": name, "normalize_punctuation": not args.no_normalize, "export_dir": str(args.out),
                        "compute_type": args.compute_type, "use_vmap": args.vmap is not None,
                        **({"spec": spec} if spec is not None else {})},
            vmap=args.vmap)
    meta = json.loads((args.out / META).read_text(encoding="utf-8"))
    codec = TextCodec(args.out / SPM, meta["source_lang"], meta["target_lang"], normalize=False)
    device = ct2_device(args.cpu)
    results: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for ctype in args.compute_types:
        try:
            resolved = resolve_compute_type(args.compute_type if ctype == "auto" else ctype, device)
        except BackendError as err:
            log.warning("skipping compute type %s: %s", ctype, err)
            continue
        if resolved in seen:
            continue
        seen.add(resolved)
        results[ctype] = measure(args.out, ctype, lines, refs, codec, options, args.threads,
                                 args.inter_threads, args.intra_threads, args.cpu, args.speed_runs)
    if not results:
        raise BackendError(f"none of the compute types {args.compute_types} is supported on {device}")
    batch = ct2_batch(options, meta, device)  # what was measured: the one given, else CTranslate2's default for the device
    meta["decoding"] = {**options.search(), "max_tokens": batch.max_tokens, "batch_size": batch.batch_size}
    meta["evaluation"] = {"set": args.set_name, "sentences": len(lines), "ctranslate2": results, "fairseq": fairseq}
    (args.out / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    size = directory_bytes(args.out)
    (args.out / "README.md").write_text(readme(name, meta, results, fairseq, size, args.set_name, len(lines)),
                                        encoding="utf-8")
    log.info("exported %s to %s (%.1f MB, %.1f s)", name, args.out, size / 1e6, time.perf_counter() - began)


if __name__ == "__main__":
    run(main)
