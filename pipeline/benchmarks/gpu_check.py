"""GPU check: the smoke pipeline on one GPU (fp16) against the same pipeline on the CPU, in one command.

    python -m pipeline.benchmarks.gpu_check [--workdir DIR] [--cpu-cores 8] [--json FILE]

Needs CUDA (else it prints "SKIPPED: ..." and exits with status 3) and the Multi30k mirror (--mirror,
default ../shared/data/multi30k beside the repository). Two Snakemake runs of config/smoke.yaml, at
the same time, each in its own directory under --workdir, both training the teacher and a
seq_word_kd student (online teacher) and evaluating them on the test set with fairseq and CTranslate2:
  gpu/  resources gpus 1: fp16 training, fairseq fp16 distillation and evaluation, CTranslate2 float16;
  cpu/  no GPU (PIPELINE_GPUS="", CUDA_VISIBLE_DEVICES=""): fp32 everywhere, CTranslate2 float32.
Then the GPU run's teacher translates the training source (the distillation's input) three ways:
fairseq fp16 and CTranslate2 float16 on the GPU, fairseq fp32 on the CPU, timed.

Printed, and written to --json: the GPU's name; per model and backend the test BLEU of both runs and
their difference; training wall times; decoding speeds (sentences/s); and the agreement (BLEU of the
GPU translations against the CPU translation of the same teacher). Tolerances, from issue 22:
  * test BLEU of each model (fairseq beam, and CTranslate2 float16 vs float32) within --bleu-tolerance
    (0.5) of the CPU run's;
  * with --min-agreement A: the GPU decodings of the same teacher agree with the CPU's (BLEU against
    it >= A). Off by default: a smoke teacher's many looping hypotheses stop at their length cap,
    which depends on the batch's longest source, so even CTranslate2 float32 and fairseq on the same
    CPU disagree there; the agreement is printed either way.
--max-update N trains every model N updates instead of the smoke config's 60 (higher: BLEU worth
comparing, but a longer CPU run).
--on-cpu checks the script's own mechanics on a machine without a GPU: the "gpu" run then also runs on
the CPU (float32, no fp16); its figures say nothing about GPUs.
Exit status: 0 all within tolerance, 1 some outside (listed), 2 a run failed or timed out, 3 skipped (no CUDA).
Meant to take under 8 minutes on one GPU beside 8 CPU cores (--timeout stops the runs; unmeasured:
no GPU has run it yet).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TEACHER, STUDENT = "teacher", "student_seq_word_kd_a0.5_t1"
SKIPPED_STATUS = 3


def cuda_device() -> str | None:
    """The first CUDA device's name, or None when torch sees no GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_config(mirror: Path, gpu: bool, threads: int, max_update: int | None = None) -> dict[str, Any]:
    """config/smoke.yaml with one seq_word_kd student, evaluated by fairseq and CTranslate2, on GPU or CPU."""
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text(encoding="utf-8"))
    res = {"threads": threads, "gpus": 1 if gpu else 0, "mem_mb": 4000, "runtime": 30}
    return deep_merge(cfg, {
        "data": {"mirror": str(mirror)},
        "resources": {"train": res, "distill": res, "evaluate": res},
        "students": {"variants": ["seq_word_kd"], "alpha": [0.5], "temperature": [1.0]},
        "train": {"fp16": True,  # used on the GPU only
                  **({"max_update": max_update, "validate_interval_updates": max(1, max_update // 2),
                      "save_interval_updates": max(1, max_update // 2)} if max_update else {})},
        "distill": {"fp16": True},
        "evaluate": {"sets": ["test"], "fp16": gpu, "backends": ["fairseq", "ctranslate2"]},
        "ct2": {"compute_type": {"cpu": "float32", "cuda": "float16"},
                "evaluate_compute_types": ["float16" if gpu else "float32"]},
    })


def start_run(workdir: Path, config: dict, cores: int, gpu: bool) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not gpu:
        env.update(PIPELINE_GPUS="", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "snakemake", "evaluate", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), "--configfile", str(workdir / "config.yaml")]
    out = (workdir / "snakemake.out").open("w")
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def eval_result(workdir: Path, model: str, suffix: str = "") -> dict[str, Any]:
    data = json.loads((workdir / "results" / "eval" / model / f"test{suffix}.json").read_text(encoding="utf-8"))
    beam = data["beam"]
    return {"bleu": beam["bleu"]["score"], "sent_per_s": beam["speed"].get("sentences_per_s")}


def train_seconds(workdir: Path, model: str) -> float | None:
    path = workdir / "benchmarks" / "train" / f"{model}.tsv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def timed_translate(model: Path, source: Path, output: Path, extra: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.translate", "--model", str(model), "-i", str(source),
                    "-o", str(output), "--beam", "2", *extra], check=True, env=env)
    return time.perf_counter() - start


def agreement(hyp: Path, ref: Path) -> float:
    from sacrebleu.metrics import BLEU

    hyps = hyp.read_text(encoding="utf-8").splitlines()
    refs = ref.read_text(encoding="utf-8").splitlines()
    return BLEU().corpus_score(hyps, [refs]).score


def compare(gpu: dict[str, Any], cpu: dict[str, Any], tolerance: float, min_agreement: float | None) -> list[str]:
    """Everything outside the tolerances, in words (empty: the GPU path matches the CPU path)."""
    problems = []
    for key, g in gpu["bleu"].items():
        c = cpu["bleu"][key]
        if abs(g - c) > tolerance:
            problems.append(f"{key}: test BLEU {g:.2f} on GPU vs {c:.2f} on CPU (|diff| > {tolerance})")
    for key, value in gpu["agreement"].items():
        if min_agreement is not None and value < min_agreement:
            problems.append(f"{key}: BLEU against the CPU translation {value:.1f} < {min_agreement}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("gpu_check"), help="runs go to WORKDIR/gpu, WORKDIR/cpu")
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--cpu-cores", type=int, default=8, help="cores of the CPU run (the GPU run gets 4)")
    parser.add_argument("--bleu-tolerance", type=float, default=0.5)
    parser.add_argument("--min-agreement", type=float, default=None,
                        help="check the GPU decodings' BLEU against the CPU's (default: report only)")
    parser.add_argument("--max-update", type=int, help="updates per model (default: the smoke config's)")
    parser.add_argument("--json", type=Path, help="write the figures here (default WORKDIR/gpu_check.json)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds for both pipeline runs (default 420)")
    parser.add_argument("--on-cpu", action="store_true", help="mechanics check without a GPU (no GPU figures)")
    args = parser.parse_args(argv)
    device = "CPU (--on-cpu: mechanics check, no GPU figures)" if args.on_cpu else cuda_device()
    on_gpu = not args.on_cpu
    if device is None:
        print("gpu_check: SKIPPED: no CUDA device visible (torch.cuda.is_available() is False); "
              "the GPU path is unmeasured", file=sys.stderr)
        return SKIPPED_STATUS
    if not args.mirror.is_dir():
        print(f"gpu_check: error: Multi30k mirror not found at {args.mirror} (--mirror)", file=sys.stderr)
        return 2
    work = args.workdir.resolve()
    gpu_dir, cpu_dir = work / "gpu", work / "cpu"
    print(f"gpu_check: {device}; runs in {gpu_dir} and {cpu_dir}", flush=True)
    start = time.perf_counter()
    runs = {"gpu": start_run(gpu_dir, run_config(args.mirror.resolve(), on_gpu, 4, args.max_update), 4, on_gpu),
            "cpu": start_run(cpu_dir, run_config(args.mirror.resolve(), False, 2, args.max_update), args.cpu_cores,
                             False)}
    failed = []
    for name, proc in runs.items():
        try:
            status = proc.wait(timeout=max(1.0, args.timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            print(f"gpu_check: the {name} run took more than --timeout {args.timeout:g} s: stopped", file=sys.stderr)
            status = -1
        if status != 0:
            failed.append(name)
    pipeline_s = time.perf_counter() - start
    if failed:
        for name in failed:
            print(f"gpu_check: the {name} run failed; see {work / name / 'snakemake.out'}", file=sys.stderr)
        return 2

    figures: dict[str, Any] = {"device": device, "pipeline_seconds": round(pipeline_s, 1)}
    half = "float16" if on_gpu else "float32"
    for name, wd, ct2_type in (("gpu", gpu_dir, half), ("cpu", cpu_dir, "float32")):
        entry: dict[str, Any] = {"bleu": {}, "sent_per_s": {}, "train_seconds": {}, "agreement": {}}
        for model in (TEACHER, STUDENT):
            for backend, suffix in (("fairseq", ""), (f"ct2-{ct2_type}", f".ct2-{ct2_type}")):
                result = eval_result(wd, model, suffix)
                key = f"{model} {backend.split('-')[0]}"
                entry["bleu"][key], entry["sent_per_s"][f"{model} {backend}"] = result["bleu"], result["sent_per_s"]
            entry["train_seconds"][model] = train_seconds(wd, model)
        figures[name] = entry

    # the distillation's decoding: the GPU run's teacher on the training source, three ways
    src = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["src"]
    source, out = gpu_dir / "work" / "data" / "raw" / f"train.{src}", work / "translate"
    out.mkdir(exist_ok=True)
    teacher, teacher_ct2 = gpu_dir / "work" / "models" / TEACHER / "model.pt", gpu_dir / "work" / "ct2" / TEACHER
    gpu_env = dict(os.environ, PYTHONPATH=str(REPO))
    cpu_env = dict(gpu_env, CUDA_VISIBLE_DEVICES="")
    lines = sum(1 for _ in source.open(encoding="utf-8"))
    seconds = {
        "fairseq fp32 cpu": timed_translate(teacher, source, out / "cpu.txt", ["--cpu"], cpu_env),
        "fairseq fp16 gpu": timed_translate(teacher, source, out / "fairseq_fp16.txt",
                                            ["--fp16"] if on_gpu else ["--cpu"], gpu_env),
        "ct2 float16 gpu": timed_translate(teacher_ct2, source, out / "ct2_float16.txt",
                                           ["--compute-type", half], gpu_env),
    }
    figures["distill_decode"] = {k: {"seconds": round(s, 2), "sent_per_s": round(lines / s, 1)} for k, s in seconds.items()}
    figures["gpu"]["agreement"] = {
        "teacher fairseq fp16": agreement(out / "fairseq_fp16.txt", out / "cpu.txt"),
        "teacher ct2 float16": agreement(out / "ct2_float16.txt", out / "cpu.txt"),
    }
    problems = compare(figures["gpu"], figures["cpu"], args.bleu_tolerance, args.min_agreement)
    figures["within_tolerance"], figures["problems"] = not problems, problems

    print(f"\nGPU check on {device} (pipeline runs {pipeline_s:.0f} s; tolerance: BLEU +-{args.bleu_tolerance}, "
          f"agreement >= {args.min_agreement if args.min_agreement is not None else 'not checked'})")
    print(f"{'test BLEU':<40} {'GPU':>8} {'CPU':>8} {'diff':>7}")
    for key, g in figures["gpu"]["bleu"].items():
        c = figures["cpu"]["bleu"][key]
        print(f"{key:<40} {g:8.2f} {c:8.2f} {g - c:+7.2f}")
    print(f"\n{'evaluation speed (sent/s, beam)':<40} {'GPU':>8} {'CPU':>8}")
    for (gk, g), (_, c) in zip(figures["gpu"]["sent_per_s"].items(), figures["cpu"]["sent_per_s"].items(), strict=True):
        print(f"{gk:<40} {g or 0:8.1f} {c or 0:8.1f}")
    print(f"\n{'training wall time (s)':<40} {'GPU':>8} {'CPU':>8}")
    for model in (TEACHER, STUDENT):
        g, c = figures["gpu"]["train_seconds"][model], figures["cpu"]["train_seconds"][model]
        print(f"{model:<40} {g or 0:8.1f} {c or 0:8.1f}")
    print(f"\ndistillation decoding, teacher, {lines} training sentences, beam 2:")
    for key, value in figures["distill_decode"].items():
        print(f"  {key:<22} {value['seconds']:7.2f} s {value['sent_per_s']:8.1f} sent/s")
    for key, value in figures["gpu"]["agreement"].items():
        print(f"  {key:<22} BLEU vs the CPU translation {value:.1f}")
    print("\nwithin tolerance" if not problems else "\nOUTSIDE TOLERANCE:\n  " + "\n  ".join(problems))
    json_path = args.json or work / "gpu_check.json"
    json_path.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(f"figures: {json_path}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
