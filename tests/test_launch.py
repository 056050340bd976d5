"""pipeline.launch: resources.train (nodes, tasks, gpus) -> the Slurm executor plugin's resources, the
sbatch line the plugin builds from them, and the srun line / fairseq options inside the job."""

from __future__ import annotations

import shlex

import pytest
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

from pipeline import launch
from pipeline.cpuinfo import cpu_has_native_bf16
from pipeline.errors import ConfigError


class Resources(dict):
    """What the plugin reads: job.resources.get(name) and job.resources.name."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Job:
    def __init__(self, resources: dict, threads: int):
        self.resources, self.threads = Resources(resources), threads


def sbatch_options(train_res: dict, threads: int = 4) -> dict[str, str]:
    """The sbatch options the executor plugin (the installed version) builds for the training job."""
    topo = launch.topology(train_res)
    resources = {"mem_mb": 8000, "runtime": 60, **launch.snakemake_resources(topo, on_slurm=True)}
    job = Job(resources, threads)
    validate_slurm_extra(job)  # raises on options the plugin sets itself
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "rule_train_model", "account": "",
              "partition": "", "workdir": ""}
    words = shlex.split(get_submit_command(job, params))
    options = {}
    for word in words[1:]:
        if word.startswith("--") and "=" in word:
            key, value = word.split("=", 1)
            options[key] = value
    return options


def test_one_task_is_todays_job():
    topo = launch.topology({"threads": 2, "gpus": 1})
    assert not topo.multi_task and topo.world_size == 1
    assert launch.snakemake_resources(topo, on_slurm=True) == {"gpu": 1}
    assert launch.snakemake_resources(launch.topology({"gpus": 0}), on_slurm=False) == {"gpu": 0}
    assert launch.train_args(topo) == []
    # inside a Slurm job, one task: no srun, fairseq launched as before
    assert launch.launch_plan(topo, {"SLURM_JOB_ID": "7"}) is None


def test_two_nodes_of_four_gpus_on_slurm():
    topo = launch.topology({"nodes": 2, "tasks": 4, "gpus": 1, "threads": 8})
    assert (topo.world_size, topo.gpus_per_node, topo.gpus_per_task) == (8, 4, 1)
    assert launch.snakemake_resources(topo, on_slurm=True) == {
        "gpu": 0, "nodes": 2, "tasks": 8, "mpi": "srun", "slurm_extra": "--ntasks-per-node=4 --gpus-per-node=4",
    }
    # locally (one machine): the GPU counter is this machine's share, 4
    assert launch.snakemake_resources(topo, on_slurm=False)["gpu"] == 4
    opts = sbatch_options({"nodes": 2, "tasks": 4, "gpus": 1, "threads": 8}, threads=8)
    assert opts["--nodes"] == "2" and opts["--ntasks"] == "8" and opts["--ntasks-per-node"] == "4"
    assert opts["--gpus-per-node"] == "4" and opts["--cpus-per-task"] == "8"
    assert "--gpus" not in opts and "--ntasks-per-gpu" not in opts  # no job-total GPU request

    plan = launch.launch_plan(topo, {"SLURM_JOB_ID": "1234", "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "h", "PATH": "/bin"},
                              fp16=True)
    assert plan.prefix == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--cpus-per-task=8",
                           "--gpus-per-node=4", "--kill-on-bad-exit=1", "--label", "--unbuffered"]
    assert plan.fairseq_args == ["--fp16", "--distributed-backend", "nccl", "--distributed-world-size", "8",
                                 "--distributed-port", str(20000 + 1234)]
    # Slurm sets each task's CUDA_VISIBLE_DEVICES; torchrun variables would switch fairseq off its Slurm path
    assert "CUDA_VISIBLE_DEVICES" not in plan.env and "MASTER_ADDR" not in plan.env
    assert plan.env["OMP_NUM_THREADS"] == "8" and plan.env["PATH"] == "/bin"
    assert launch.train_args(topo) == ["--nodes", "2", "--tasks-per-node", "4", "--gpus-per-task", "1",
                                       "--threads-per-task", "8"]


def test_two_cpu_tasks():
    topo = launch.topology({"tasks": 2, "gpus": 0, "threads": 1})
    assert launch.snakemake_resources(topo, on_slurm=True) == {
        "gpu": 0, "nodes": 1, "tasks": 2, "mpi": "srun", "slurm_extra": "--ntasks-per-node=2"}
    assert launch.snakemake_resources(topo, on_slurm=False)["gpu"] == 0
    opts = sbatch_options({"tasks": 2, "gpus": 0, "threads": 1}, threads=1)
    assert (opts["--nodes"], opts["--ntasks"], opts["--ntasks-per-node"], opts["--cpus-per-task"]) == ("1", "2", "2", "1")
    assert not any(k.startswith("--gpus") for k in opts)
    plan = launch.launch_plan(topo, {"SLURM_JOB_ID": "99", "CUDA_VISIBLE_DEVICES": ""}, fp16=True)
    assert plan.prefix == ["srun", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                           "--kill-on-bad-exit=1", "--label", "--unbuffered"]
    assert plan.fairseq_args == ["--cpu", "--distributed-backend", "gloo", "--distributed-world-size", "2",
                                 "--distributed-port", "20099"]
    assert plan.env["CUDA_VISIBLE_DEVICES"] == ""  # CPU tasks keep torch off any GPU


def test_two_nodes_one_gpu_each_passes_the_plugins_mpi_checks():
    # tasks_per_node 1 would be refused by the plugin's MPI check (> 1): the total goes in `tasks`
    opts = sbatch_options({"nodes": 2, "tasks": 1, "gpus": 1})
    assert (opts["--nodes"], opts["--ntasks"], opts["--ntasks-per-node"], opts["--gpus-per-node"]) == ("2", "2", "1", "1")


def test_multi_task_outside_slurm_launches_as_before():
    topo = launch.topology({"tasks": 2, "gpus": 0})
    assert launch.launch_plan(topo, {"PATH": "/bin"}) is None


def test_rule_resources_ask_the_executor_when_jobs_are_built():
    topo = launch.topology({"tasks": 2, "gpus": 1})
    executor = {"name": "local"}
    res = launch.rule_resources(topo, lambda: executor["name"])
    assert set(res) == {"gpu", "nodes", "tasks", "mpi", "slurm_extra"}
    assert res["gpu"](None) == 2
    executor["name"] = "slurm"
    assert res["gpu"](None) == 0
    executor["name"] = "slurm-jobstep"
    assert res["gpu"](None) == 0
    assert launch.rule_resources(launch.topology({}), lambda: "slurm") == {"gpu": 1}


@pytest.mark.parametrize("train_res, key", [
    ({"tasks": 0}, "resources.train.tasks"),
    ({"nodes": 0}, "resources.train.nodes"),
    ({"tasks": 4, "gpus": 2}, "resources.train.gpus"),
    ({"nodes": 2, "tasks": 1, "gpus": 0}, "resources.train.tasks"),
])
def test_impossible_topologies_name_the_key(train_res, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        launch.topology(train_res)


def test_port_follows_the_job():
    assert launch.distributed_port("1") != launch.distributed_port("2")
    assert 1024 < launch.distributed_port("987654321") < 65536


def test_a_run_moves_between_one_task_and_srun_without_restarting(tmp_path):
    """The distributed options are continuation options: a run started as one task resumes under srun."""
    from pipeline.train import run_identity

    data = tmp_path / "bin"
    data.mkdir()
    (data / "dict.en.txt").write_text("a 1\n")
    base = ["python", "-m", "fairseq_cli.train", str(data), "--lr", "0.1", "--max-update", "5"]
    plan = launch.launch_plan(launch.topology({"tasks": 2, "gpus": 0}), {"SLURM_JOB_ID": "5"})
    assert run_identity([*base, "--cpu"], data) == run_identity([*base, *plan.fairseq_args], data)
    assert run_identity([*base, "--cpu"], data) != run_identity([*base, "--lr", "0.2", "--cpu"], data)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 fma\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw fma\n")  # AVX-512 without bf16
    assert not cpu_has_native_bf16("")  # no /proc/cpuinfo


def test_cpu_bf16_adds_amp_only_where_the_cpu_has_it(monkeypatch):
    assert launch.cpu_args(False) == ["--cpu"]
    monkeypatch.setattr(launch, "cpu_has_native_bf16", lambda: True)
    assert launch.cpu_args(True) == ["--cpu", "--amp"]
    assert launch.cpu_args(False) == ["--cpu"]
    topo = launch.topology({"nodes": 1, "tasks": 2, "gpus": 0, "threads": 1})
    assert launch.fairseq_distributed_args(topo, "7", fp16=False, cpu_bf16=True)[:3] == ["--cpu", "--amp", "--distributed-backend"]
    monkeypatch.setattr(launch, "cpu_has_native_bf16", lambda: False)
    assert launch.cpu_args(True) == ["--cpu"]
