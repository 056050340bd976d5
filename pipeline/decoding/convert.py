"""Conversion: a fairseq Transformer checkpoint -> a CTranslate2 model directory (pipeline.decoding.ct2_dir).

    python -m pipeline.ct2 convert --model work/models/teacher-<key>/model.pt --out work/ct2/teacher-<key> \
        [--data work/data/<dir>/bin] [--spm work/data/<dir>/spm/spm.model] [--quantization float32] [--no-normalize] [--vmap FILE]

(the rules' command line; `python -m pipeline.decoding.convert` takes the same flags without `convert`).
Only this module imports torch and fairseq on the CTranslate2 side: a converted model decodes without them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.cli import run
from pipeline.decoding.compute import COMPUTE_TYPES
from pipeline.decoding.ct2_dir import META, SPM, VMAP
from pipeline.errors import BackendError, DataError, ModelError

log = logging.getLogger("pipeline.decoding.convert")


def convert(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    spm: str | os.PathLike | None = None,
    quantization: str = "float32",
    extra_meta: dict[str, Any] | None = None,
    vmap: str | os.PathLike | None = None,
) -> Path:
    """Convert a fairseq Transformer checkpoint into a CTranslate2 model directory (with spm.model, pipeline.json).

    vmap: a vocabulary shortlist (pipeline.vmap) stored with the model; decoding uses it only when
    asked (use_vmap=True), since a shortlist changes the output.

    The model is loaded by pipeline.decoding.fairseq_model.load_model (dictionaries, languages and
    plugins resolved as for decoding; stripped checkpoints, whose fast-path weight copies fairseq
    rebuilds) and handed to CTranslate2's FairseqConverter, whose own loader assumes a pickled-args
    checkpoint beside its data. Files are written to a temporary directory and moved in, model.bin
    last, so a model.bin is always a finished conversion.
    """
    import ctranslate2
    import torch
    from ctranslate2.converters import fairseq as fairseq_converter

    from pipeline.decoding.fairseq_model import find_spm, load_model

    out = Path(out)
    if quantization not in COMPUTE_TYPES:
        raise BackendError(f"quantization {quantization}: not one of {', '.join(COMPUTE_TYPES)}")
    if vmap is not None and not Path(vmap).is_file():
        raise DataError(f"{vmap}: no such vocabulary map (build one with python -m pipeline.vmap)")
    began = time.perf_counter()
    lm = load_model(checkpoint, data_dir=data_dir, cpu=True)
    spm_path = find_spm(lm, spm)
    model_cfg = lm.cfg.model

    class LoadedModelConverter(fairseq_converter.FairseqConverter):
        def __init__(self) -> None:  # the model is already loaded; nothing of the base's state is used
            pass

        def _load(self):
            spec = fairseq_converter._get_model_spec(model_cfg)
            with torch.no_grad():
                fairseq_converter.set_transformer_encoder(spec.encoder, lm.model.encoder)
                fairseq_converter.set_transformer_decoder(spec.decoder, lm.model.decoder)
            spec.register_source_vocabulary(fairseq_converter._get_vocab(lm.task.source_dictionary))
            spec.register_target_vocabulary(fairseq_converter._get_vocab(lm.task.target_dictionary))
            spec.config.decoder_start_token = spec.config.eos_token  # fairseq starts decoding with EOS
            spec.config.add_source_eos = True
            # fairseq's LayerNorm epsilon (torch's 1e-5); CTranslate2 assumes 1e-6 when none is given
            spec.config.layer_norm_epsilon = float(lm.model.encoder.layers[0].self_attn_layer_norm.eps)
            return spec

    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            LoadedModelConverter().convert(str(tmp), vmap=str(vmap) if vmap else None, quantization=quantization,
                                           force=True)
        except (ValueError, NotImplementedError) as err:  # the converter's configuration checks
            raise ModelError(f"{lm.path}: CTranslate2 cannot convert this model ({err})") from None
        shutil.copyfile(spm_path, tmp / SPM)
        meta = {
            "format": "ctranslate2",
            "source_lang": lm.source_lang,
            "target_lang": lm.target_lang,
            "max_source_positions": int(lm.model.max_positions()[0]),
            "max_target_positions": int(lm.model.max_positions()[1]),
            "quantization": quantization,
            "checkpoint": str(lm.path),
            "data_dir": str(lm.data_dir),
            "spm": SPM,
            "spm_source": str(spm_path),
            **({"vmap": VMAP, "vmap_source": str(vmap)} if vmap else {}),
            "ctranslate2": ctranslate2.__version__,
            "conversion_seconds": round(time.perf_counter() - began, 2),
            **(extra_meta or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "model.bin"] + ["model.bin"]:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s (%s weights, %.1f s)", lm.path, out, quantization, time.perf_counter() - began)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The conversion's flags (the same under `python -m pipeline.ct2 convert` and `python -m pipeline.decoding.convert`)."""
    parser.add_argument("--model", type=Path, required=True, help="fairseq checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output directory (model.bin, spm.model, pipeline.json, ...)")
    parser.add_argument("--data", type=Path, help="dictionaries (default: found from the checkpoint)")
    parser.add_argument("--spm", type=Path, help="SentencePiece model (default: beside the checkpoint, else from the data directory)")
    parser.add_argument("--quantization", default="float32", choices=COMPUTE_TYPES,
                        help="weights as stored (default float32: any compute type can be chosen when loading)")
    parser.add_argument("--vmap", type=Path, help="vocabulary shortlist to store with the model (python -m pipeline.vmap)")
    parser.add_argument("--no-normalize", action="store_true",
                        help="record that the data stage did not Moses-normalise punctuation (translation then skips it)")


def convert_from_args(args: argparse.Namespace) -> Path:
    return convert(args.model, args.out, data_dir=args.data, spm=args.spm, quantization=args.quantization,
                   extra_meta={"normalize_punctuation": not args.no_normalize}, vmap=args.vmap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    convert_from_args(parser.parse_args())


if __name__ == "__main__":
    run(main)
