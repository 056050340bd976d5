"""Multi-task training: from `resources.train` to the Slurm job's resources and the srun launch line.

`resources.train` has two keys for training beyond one process (both default 1):

    nodes: 2    # Slurm nodes
    tasks: 4    # tasks per node = GPUs per node (one fairseq process, one GPU each)
    gpus: 1     # with nodes * tasks > 1: 0 makes the tasks CPU tasks (gloo), else one GPU per task

One task (nodes 1, tasks 1) is today's job: one process that uses every GPU it was given.

Who runs what, for nodes * tasks > 1 on Slurm:
  * Snakemake submits ONE job with `--nodes=M --ntasks=M*T --ntasks-per-node=T` (and
    `--gpus-per-node=T` for GPU tasks), see `snakemake_resources`. The resource `mpi` tells the
    executor plugin's job step not to wrap the rule in `srun -n1`: the rule's shell runs once, in the
    batch script on the first node.
  * There `python -m pipeline.train` runs once: its pre-step (the run identity in run.json, resume or
    set aside) and post-step (the final model.pt) run exactly once.
  * Between them it starts `srun ... python -m fairseq_cli.train ...` (`Launch.prefix`): one fairseq
    process per task, M*T in all. fairseq's own Slurm initialisation (`--distributed-port`,
    fairseq/distributed/utils.py `_infer_slurm_init`) reads SLURM_PROCID / SLURM_LOCALID /
    SLURM_NTASKS_PER_NODE / the step's node list and sets rank, device and world size. Rank 0 writes
    the checkpoints and the progress log; every rank reads checkpoint_last.pt when resuming.
  * A killed job, rerun, resumes like a single task: the pre-step finds checkpoint_last.pt.

Without Slurm (no SLURM_JOB_ID), or with one task, `launch_plan` returns None and training is
launched as before: one process, distributed over the visible GPUs when there are several.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.cpuinfo import cpu_has_native_bf16
from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.launch")

# fairseq's tcp:// rendezvous port on the first node: derived from the job id, so that two training
# jobs sharing a node do not collide
PORT_BASE, PORT_SPAN = 20000, 30000
# torch.distributed.launch variables: when all are set fairseq takes its torchrun path instead
_TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Topology:
    """How training is spread: nodes x tasks per node, each task on one GPU or on the CPU."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_task: int = 1  # 0: CPU tasks; single-task jobs use `gpus` GPUs (see job_gpus)
    gpus: int = 1  # resources.train.gpus as configured (GPUs of a single-task job)
    threads: int = 1  # CPU cores per task

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def multi_task(self) -> bool:
        return self.world_size > 1

    @property
    def gpus_per_node(self) -> int:
        return self.tasks_per_node * self.gpus_per_task if self.multi_task else self.gpus


def topology(train_res: Mapping[str, int], key: str = "resources.train") -> Topology:
    """The topology from `resources.train`; ConfigError naming the key for impossible values."""
    nodes, tasks = int(train_res.get("nodes", 1)), int(train_res.get("tasks", 1))
    gpus, threads = int(train_res.get("gpus", 1)), int(train_res.get("threads", 2))
    for name, value, low in (("nodes", nodes, 1), ("tasks", tasks, 1), ("gpus", gpus, 0), ("threads", threads, 1)):
        if value < low:
            raise ConfigError(f"{key}.{name}: must be >= {low}, got {value}")
    if nodes * tasks > 1 and gpus not in (0, 1, tasks):
        raise ConfigError(
            f"{key}.gpus: {gpus} with tasks {tasks}: each task drives one GPU (tasks per node = GPUs per node); "
            f"set gpus to 1 (or {tasks}) for GPU tasks, 0 for CPU tasks"
        )
    if nodes > 1 and tasks == 1 and gpus == 0:
        # with one task per node fairseq makes the world size nodes x the node's CUDA devices (0 here)
        raise ConfigError(f"{key}.tasks: CPU tasks (gpus 0) on {nodes} nodes need tasks >= 2 per node")
    return Topology(nodes, tasks, (1 if gpus else 0) if nodes * tasks > 1 else gpus, gpus, threads)


def snakemake_resources(topo: Topology, on_slurm: bool) -> dict[str, int | str]:
    """The training rule's resources besides threads, mem_mb and runtime.

    One task: {"gpu": gpus}, as before (the plugin turns it into --gpus=N). Several tasks: the
    executor plugin's `nodes` (--nodes), `tasks` (--ntasks, all nodes together) and `mpi` (its job step
    then runs the rule's shell directly, which starts srun itself); `slurm_extra` carries
    --ntasks-per-node and, for GPU tasks, --gpus-per-node (both per node, which the plugin's own
    `gpu` resource, a job total, cannot say). `gpu` stays the local GPU count (one machine, T GPUs)
    for local runs and is 0 on Slurm, where it would add a conflicting --gpus.
    """
    if not topo.multi_task:
        return {"gpu": topo.gpus}
    extra = f"--ntasks-per-node={topo.tasks_per_node}"
    if topo.gpus_per_task:
        extra += f" --gpus-per-node={topo.gpus_per_node}"
    return {
        "gpu": 0 if on_slurm else topo.gpus_per_node,
        "nodes": topo.nodes,
        "tasks": topo.world_size,
        "mpi": "srun",
        "slurm_extra": extra,
    }


def rule_resources(topo: Topology, executor: Callable[[], str | None]) -> dict:
    """snakemake_resources for a rule's `resources:` (`**rule_resources(...)`). The keys follow the
    config; `gpu` of a multi-task job depends on the executor, known only when jobs are built, so it
    is a callable asking `executor()` (the executor plugin's name: slurm, slurm-jobstep, local...)."""
    resources: dict = snakemake_resources(topo, on_slurm=False)
    if topo.multi_task:
        def gpu(wildcards) -> int:
            return int(snakemake_resources(topo, on_slurm="slurm" in (executor() or ""))["gpu"])
        resources["gpu"] = gpu
    return resources


def train_args(topo: Topology) -> list[str]:
    """pipeline.train's options that carry the topology into the job."""
    if not topo.multi_task:
        return []
    return ["--nodes", str(topo.nodes), "--tasks-per-node", str(topo.tasks_per_node),
            "--gpus-per-task", str(topo.gpus_per_task), "--threads-per-task", str(topo.threads)]


@dataclass(frozen=True)
class Launch:
    """How pipeline.train starts fairseq: a command prefix, fairseq device options, an environment."""

    prefix: list[str]
    fairseq_args: list[str]
    env: dict[str, str]


def distributed_port(job_id: str) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN if job_id.isdigit() else PORT_BASE


def cpu_args(cpu_bf16: bool) -> list[str]:
    """fairseq-train's options on the CPU: --amp (bfloat16 autocast, patch 14 of build_fairseq) where asked
    for and the CPU has native bfloat16."""
    if cpu_bf16 and cpu_has_native_bf16():
        log.info("training on the CPU with bfloat16 autocast (fairseq --amp): the CPU has native bfloat16")
        return ["--cpu", "--amp"]
    return ["--cpu"]


def srun_command(topo: Topology) -> list[str]:
    """srun line: one task per process, T per node, all of a node's GPUs visible to each of its tasks
    (fairseq picks cuda:SLURM_LOCALID); --kill-on-bad-exit ends the step when one rank fails."""
    cmd = ["srun", f"--nodes={topo.nodes}", f"--ntasks={topo.world_size}",
           f"--ntasks-per-node={topo.tasks_per_node}", f"--cpus-per-task={topo.threads}"]
    if topo.gpus_per_task:
        cmd.append(f"--gpus-per-node={topo.gpus_per_node}")
    return cmd + ["--kill-on-bad-exit=1", "--label", "--unbuffered"]


def fairseq_distributed_args(topo: Topology, job_id: str, fp16: bool, cpu_bf16: bool = False) -> list[str]:
    device = cpu_args(cpu_bf16) + ["--distributed-backend", "gloo"] if not topo.gpus_per_task else \
        (["--fp16"] if fp16 else []) + ["--distributed-backend", "nccl"]
    return device + ["--distributed-world-size", str(topo.world_size),
                     "--distributed-port", str(distributed_port(job_id))]


def launch_plan(topo: Topology, env: Mapping[str, str] | None = None, fp16: bool = False,
                cpu_bf16: bool = False) -> Launch | None:
    """The srun launch for a multi-task topology inside a Slurm job; None: launch as before."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID", "")
    if not topo.multi_task or not job_id:
        return None
    child = {k: v for k, v in env.items() if k not in _TORCHRUN_ENV}
    if topo.gpus_per_task:
        # Slurm sets each task's CUDA_VISIBLE_DEVICES from the step's GPUs; an empty value from the
        # batch shell (pipeline.devices with gpu=0) must not reach srun's tasks in its place
        child.pop("CUDA_VISIBLE_DEVICES", None)
    child["OMP_NUM_THREADS"] = str(topo.threads)
    return Launch(srun_command(topo), fairseq_distributed_args(topo, job_id, fp16, cpu_bf16), child)


def describe(topo: Topology) -> str:
    kind = f"{topo.gpus_per_task} GPU each" if topo.gpus_per_task else "CPU, gloo"
    return f"{topo.nodes} node(s) x {topo.tasks_per_node} task(s) ({kind}), world size {topo.world_size}"


def main(argv: list[str] | None = None) -> int:
    """Run COMMAND once per task under srun, as pipeline.train runs fairseq (a probe of the launch)."""
    import argparse
    import subprocess
    import sys

    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--tasks-per-node", type=int, default=1)
    parser.add_argument("--gpus-per-task", type=int, default=1, help="0: CPU tasks")
    parser.add_argument("--threads-per-task", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    topo = Topology(args.nodes, args.tasks_per_node, args.gpus_per_task, args.gpus_per_task, args.threads_per_task)
    plan = launch_plan(topo)
    if plan is None:
        print(f"[launch] {describe(topo)}: not inside a multi-task Slurm job, running once", file=sys.stderr)
        return subprocess.run(command).returncode
    print(f"[launch] {describe(topo)}: {' '.join(plan.prefix)}", file=sys.stderr)
    return subprocess.run(plan.prefix + command, env=plan.env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
