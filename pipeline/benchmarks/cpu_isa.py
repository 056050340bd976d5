"""What a CPU's int8 instructions buy CTranslate2: the same decoding run under capped instruction sets.

CTranslate2's int8 GEMM on a CPU is Intel MKL on a GenuineIntel CPU and oneDNN elsewhere (or with
CT2_USE_MKL=0); both pick their kernels from the CPU's instruction sets (AVX2, AVX-512 with VNNI,
AMX) and both can be capped by an environment variable (MKL_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA). The library reads these once per process, so each variant decodes in a child
process (`python -m pipeline.benchmarks.cpu_isa --worker ...`) with the same model, sentences and
settings. pipeline.benchmarks.ct2_vs_fairseq runs the variants for its fastest int8 setting; the
rows explain why the same benchmark gives another ratio on another CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.cpuinfo import first_processor

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo names


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """Vendor, model name and the int8-relevant flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    fields = first_processor(cpuinfo)
    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id", "?"), "model": fields.get("model name", "?"),
            "int8_flags": [f for f in INT8_FLAGS if f in flags]}


def int8_gemm_library(cpu: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """The library CTranslate2 runs int8 GEMMs with here (its own rule: MKL on Intel unless CT2_USE_MKL says no)."""
    use = (environ if environ is not None else os.environ).get("CT2_USE_MKL", "").strip().lower()
    if use:
        return "MKL" if use in ("1", "true", "on", "yes") else "oneDNN"
    return "MKL" if cpu["vendor"] == "GenuineIntel" else "oneDNN"


@dataclass(frozen=True)
class Variant:
    label: str
    env: dict[str, str]


# Caps below the CPU's best, per library: (label, value, the flag the cap would take away)
_CAPS = {
    "MKL": ("MKL_ENABLE_INSTRUCTIONS", [("AVX-512 VNNI, no AMX", "AVX512_E1", "amx_int8"), ("AVX2", "AVX2", "avx512f")]),
    "oneDNN": ("ONEDNN_MAX_CPU_ISA", [("AVX-512 VNNI, no AMX", "AVX512_CORE_VNNI", "amx_int8"),
                                      ("AVX2", "AVX2", "avx512f")]),
}


def variants(cpu: dict[str, Any], environ: dict[str, str] | None = None) -> list[Variant]:
    """The default, each instruction-set cap that takes something away on this CPU, and the other library on Intel."""
    library = int8_gemm_library(cpu, environ)
    var, caps = _CAPS[library]
    found = [Variant(f"{library}, all instructions (default)", {})]
    found += [Variant(f"{library}, at most {label}", {var: value}) for label, value, flag in caps
              if flag in cpu["int8_flags"]]
    if cpu["vendor"] == "GenuineIntel" and library == "MKL":
        found.append(Variant("oneDNN (CT2_USE_MKL=0), all instructions", {"CT2_USE_MKL": "0"}))
    return found


def run_variant(variant: Variant, model_dir: Path, lines: list[str], compute_type: str, inter: int, intra: int,
                max_tokens: int | None, batch_size: int | None, gen: dict[str, Any],
                test_lines: list[str] | None = None) -> dict[str, Any]:
    """Decode lines (timed), then test_lines, in a child process with the variant's environment.

    Returns its speed and the best hypotheses of both ("best", "test_best").
    """
    with tempfile.TemporaryDirectory(prefix="ct2_isa_") as tmp:
        src, test, out = Path(tmp) / "src.txt", Path(tmp) / "test.txt", Path(tmp) / "out.json"
        src.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        test.write_text("".join(f"{line}\n" for line in test_lines or []), encoding="utf-8")
        repo = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, **variant.env, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "pipeline.benchmarks.cpu_isa", "--worker", "--model", str(model_dir),
               "--src", str(src), "--test-src", str(test), "--out", str(out), "--compute-type", compute_type, "--inter", str(inter),
               "--intra", str(intra), "--gen", json.dumps(gen)]
        cmd += ["--max-tokens", str(max_tokens)] if max_tokens else []
        cmd += ["--batch-size", str(batch_size)] if batch_size else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant.label}: the decoding child failed:\n{proc.stderr[-2000:]}")
        return {**json.loads(out.read_text(encoding="utf-8")), **asdict(variant)}


def worker(args: argparse.Namespace) -> None:
    from pipeline.corpus import read_lines
    from pipeline.decoding import BatchSettings, SearchOptions
    from pipeline.decoding import ct2_backend as ct2

    lines = read_lines(args.src)
    model = ct2.load(args.model, compute_type=args.compute_type, inter_threads=args.inter, intra_threads=args.intra)
    gen = SearchOptions(**json.loads(args.gen))
    decoded_batch = BatchSettings(max_tokens=args.max_tokens, batch_size=args.batch_size)
    decoded = ct2.decode(model, lines, gen, decoded_batch, warmup=True)
    test = ct2.decode_lines(model, read_lines(args.test_src), gen, decoded_batch) if args.test_src else []
    args.out.write_text(json.dumps({"compute_type": model.compute_type, "speed": decoded.stats.as_dict(),
                                    "best": [n[0].tokens for n in decoded.hypotheses],
                                    "test_best": [n[0].tokens for n in test]}), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="decode once in this process (what run_variant starts)")
    parser.add_argument("--model", type=Path, help="a converted CTranslate2 model directory")
    parser.add_argument("--src", type=Path, help="spm-encoded source lines")
    parser.add_argument("--test-src", type=Path, help="spm-encoded lines decoded after the timed run (for BLEU)")
    parser.add_argument("--out", type=Path, help="JSON: speed and best hypotheses")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--inter", type=int, default=1)
    parser.add_argument("--intra", type=int, default=1)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gen", default="{}", help="SearchOptions as JSON")
    args = parser.parse_args(argv)
    if not args.worker:  # without --worker: what this CPU offers and which variants a benchmark would run
        cpu = cpu_description()
        print(json.dumps({**cpu, "int8_gemm": int8_gemm_library(cpu), "variants": [asdict(v) for v in variants(cpu)]},
                         indent=2))
        return
    if not (args.model and args.src and args.out):
        parser.error("--worker needs --model, --src and --out")
    worker(args)


if __name__ == "__main__":
    main()
