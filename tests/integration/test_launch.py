"""Launch anywhere: the accelerate config files (launch/accelerate/), accelerate's own flags
(--mixed_precision, --use_fsdp, --dynamo_backend: vit_dist.cli.launch_env), two `accelerate launch`
machines on loopback, and slurm/train_cpu.sbatch (-> train.sbatch -> node.sh) on a real 2-node
SLURM cluster started on this machine (tests/slurm_cluster.py): a 2-node run, and preemption
by real scheduler actions (`scancel --signal=USR1`, `scontrol requeue`) that must checkpoint,
requeue and resume to the same final step."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import env, free_port, read_jsonl, run_process
from slurm_cluster import SlurmCluster
from support.launch import ACCEL, FREE_SMOKE, ROOT, SMOKE

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def _data(digits: Path) -> list[str]:
    return [f"data.train={digits}", f"data.val={digits}"]


def assert_run(out: Path, world_size: int, last_step: int, context: str = "") -> list[dict]:
    """One process group of `world_size`, every logged step with it, eval.json, a falling loss."""
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == world_size, (info, context)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics and all(m["world_size"] == world_size for m in metrics), (metrics, context)
    assert metrics[-1]["step"] == last_step, ([m["step"] for m in metrics], context)
    assert metrics[-1]["loss"] < metrics[0]["loss"], ([m["loss"] for m in metrics], context)
    final = json.loads((out / "eval.json").read_text())
    assert final["num_samples"] == 360, (final, context)
    return metrics


# ---------------------------------------------------------------------------- config files


def test_sbatch_scripts_parse_and_request_requeue():
    for name in ("train.sbatch", "train_cpu.sbatch", "node.sh"):
        proc = subprocess.run(["bash", "-n", str(ROOT / "slurm" / name)], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
    for name in ("train.sbatch", "train_cpu.sbatch"):
        directives = re.findall(r"^#SBATCH (\S+)", (ROOT / "slurm" / name).read_text(), re.M)
        for d in ("--signal=USR1@120", "--requeue", "--open-mode=append", "--ntasks-per-node=1"):
            assert d in directives, (name, d, directives)


# ---------------------------------------------------------------------------- accelerate, no SLURM


@pytest.mark.slow
@pytest.mark.multiproc
def test_cpu_config_file_runs_two_processes(digits_data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / "cpu.yaml")]
    cmd += ["-m", "vit_dist.train", "--config", str(SMOKE), *_data(digits_data_dir)]
    cmd += ["train.steps=20", "logging.every=5", "logging.wandb=false", f"output_dir={out}"]
    proc = run_process(cmd, 300, env=env(ACCELERATE_USE_CPU="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_run(out, world_size=2, last_step=20)


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_machines_on_loopback_form_one_process_group(digits_data_dir, tmp_path):
    """Two `accelerate launch --num_machines 2 --machine_rank {0,1}` (multi_node.yaml), 1 process
    each: --num_processes is the total over the machines."""
    out, port = tmp_path / "run", free_port()
    procs = []
    for rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ACCEL / "multi_node.yaml"),
        ]
        cmd += ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
        cmd += ["-m", "vit_dist.train", "--config", str(SMOKE), *_data(digits_data_dir)]
        cmd += ["train.steps=20", "logging.every=5", f"output_dir={out}"]
        log = open(tmp_path / f"machine{rank}.log", "w")  # noqa: SIM115 (closed below)
        procs.append(
            (subprocess.Popen(cmd, cwd=ROOT, env=env(ACCELERATE_USE_CPU="1"), stdout=log, stderr=log), log)
        )
    try:
        codes = [p.wait(timeout=300) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "\n".join(f"== machine {r}\n" + (tmp_path / f"machine{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [0, 0], logs
    assert_run(out, world_size=2, last_step=20, context=logs)
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run"


# ---------------------------------------------------------------------------- accelerate's own flags


def _accelerate(
    tmp_path, flags: list[str], config: Path, *words: str, **extra_env
) -> tuple[subprocess.CompletedProcess, Path]:
    """A real `accelerate launch FLAGS -m vit_dist.train` of a 4-step run (one process)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", *flags]
    cmd += ["-m", "vit_dist.train", "--config", str(config), "train.steps=4", "eval.every=1000"]
    cmd += ["checkpoint.every=1000", "logging.wandb=false", "data.workers=0", f"output_dir={out}", *words]
    return run_process(cmd, 300, env=env(**extra_env)), out


def _free_config(tmp_path, digits: Path) -> Path:
    path = tmp_path / "free.yaml"  # the smoke config without precision and parallel.*
    path.write_text(
        yaml.safe_dump(
            {**FREE_SMOKE, "data": {**FREE_SMOKE["data"], "train": str(digits), "val": str(digits)}}
        )
    )
    return path


def test_accelerate_mixed_precision_trains_in_bf16(digits_data_dir, tmp_path):
    flags = ["--cpu", "--num_processes", "1", "--mixed_precision", "bf16"]
    proc, out = _accelerate(tmp_path, flags, _free_config(tmp_path, digits_data_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["precision"] == "bf16" and info["strategy"] == "ddp", info
    assert (
        info["settings_from"]["precision"]
        == "accelerate --mixed_precision bf16 (ACCELERATE_MIXED_PRECISION=bf16)"
    )
    assert "compute torch.bfloat16" in proc.stdout, proc.stdout[-3000:]
    assert "precision from accelerate --mixed_precision bf16" in proc.stdout


def test_accelerate_flags_that_contradict_the_config_stop_before_any_work(digits_data_dir, tmp_path):
    """smoke_cpu.yaml sets precision: fp32; `--dynamo_backend inductor` against an explicit
    parallel.compile=false (a real launch that needs no compiler: it stops first)."""
    flags = ["--cpu", "--num_processes", "1", "--mixed_precision", "bf16"]
    proc, out = _accelerate(tmp_path, flags, SMOKE, *_data(digits_data_dir))
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error")]
    assert proc.returncode != 0 and lines == [
        f"config error: precision: the config sets fp32 (in {SMOKE}) but accelerate --mixed_precision bf16 "
        "(ACCELERATE_MIXED_PRECISION=bf16) asks for bf16; make them agree or drop one"
    ], proc.stderr[-3000:]
    assert not out.exists()
    flags = ["--cpu", "--num_processes", "1", "--dynamo_backend", "inductor"]
    proc, out = _accelerate(
        tmp_path, flags, _free_config(tmp_path, digits_data_dir), "parallel.compile=false"
    )
    assert (
        "config error: parallel.compile: the config sets false (on the command line) but accelerate "
        in proc.stderr
    )
    assert (
        "--dynamo_backend inductor (ACCELERATE_DYNAMO_BACKEND=INDUCTOR)" in proc.stderr and not out.exists()
    )


def test_accelerate_use_fsdp_shards(digits_data_dir, tmp_path):
    """`--use_fsdp` (accelerate's torchrun path; one CPU process: FSDP2 over a group of one)."""
    flags = ["--use_fsdp", "--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc, out = _accelerate(tmp_path, flags, _free_config(tmp_path, digits_data_dir), ACCELERATE_USE_CPU="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert (info["strategy"], info["sharded"], info["world_size"]) == ("fsdp", True, 1), info
    assert info["settings_from"]["parallel.strategy"] == "accelerate --use_fsdp (ACCELERATE_USE_FSDP=true)"


# ---------------------------------------------------------------------------- a real SLURM cluster


class Job:
    def __init__(
        self,
        slurm: SlurmCluster,
        tmp_path: Path,
        overrides: list[str],
        nodes: int = 2,
        extra_env: dict[str, str] | None = None,
    ):
        self.slurm = slurm
        runs = tmp_path / "runs"
        job_env = {
            "VIT_DIST_PYTHON": sys.executable,  # the venv these tests run in
            "VIT_DIST_RUNS_DIR": str(runs),
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            **(extra_env or {}),
        }
        args = [f"--nodes={nodes}", f"--output={tmp_path}/%x-%j.out", "slurm/train_cpu.sbatch", str(SMOKE)]
        self.id = slurm.sbatch([*args, *overrides], cwd=ROOT, env=job_env)
        self.out = runs / f"vit_dist_cpu-{self.id}"  # output_dir per job: <job name>-<job id>
        self.log_path = tmp_path / f"vit_dist_cpu-{self.id}.out"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def debug(self) -> str:
        return self.slurm.job_logs(self.slurm.job(self.id))

    def wait_done(self, timeout: float = 300) -> dict:
        info = self.slurm.wait_job(self.id, lambda i: i.get("JobState") in TERMINAL, timeout)
        assert info["JobState"] == "COMPLETED", f"job {self.id}: {info}\n{self.debug()}"
        return info

    def wait_step(self, step: int, timeout: float = 180) -> None:
        """Until rank 0 has logged `step` (fails at once, with the logs, if the job ends first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            metrics = read_jsonl(self.out / "metrics.jsonl")
            if metrics and metrics[-1]["step"] >= step:
                return
            state = self.slurm.job(self.id).get("JobState")
            assert state not in TERMINAL, f"job {self.id} ended ({state}) before step {step}\n{self.debug()}"
            time.sleep(0.5)
        raise AssertionError(f"job {self.id} did not reach step {step} in {timeout} s\n{self.debug()}")


@pytest.mark.slow
@pytest.mark.multiproc
def test_sbatch_two_nodes_forms_one_process_group(slurm, digits_data_dir, tmp_path):
    job = Job(slurm, tmp_path, _data(digits_data_dir))  # the smoke config as it is: 30 steps
    info = job.wait_done()
    log = job.log()
    assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2", info
    # One srun task per node, machine rank = that node's SLURM_NODEID, read on the node.
    assert "[node 0/2 n1]" in log and "[node 1/2 n2]" in log, log[-3000:]
    assert_run(job.out, world_size=2 * 1, last_step=30, context=log[-3000:])  # 2 nodes x 1 process
    assert re.search(r"upload the W&B run with: wandb sync \S+/wandb/offline-run-", log), log[-2000:]
    assert int(info["Restarts"]) == 0


def _preempt_and_resume(job: Job, steps: int) -> tuple[int, str]:
    """After the scheduler action: the job completed after one requeue, with the checkpoint taken
    at the signal and a resume from exactly that step to the configured final step."""
    info = job.wait_done(timeout=300)
    log = job.log()
    assert int(info["Restarts"]) == 1, (info, log[-3000:])
    saved = re.findall(r"preemption signal: checkpoint saved at step (\d+)", log)
    resumed = re.findall(r"resumed from \S+/checkpoints/step-(\d+) at step (\d+)", log)
    assert len(set(saved)) == 1 and resumed, f"no preemption checkpoint + resume in the log\n{log[-5000:]}"
    step = int(saved[0])
    assert resumed == [(f"{step:08d}", str(step))], resumed
    assert 0 < step < steps
    assert (job.out / "checkpoints" / f"step-{step:08d}").is_dir()
    metrics = assert_run(job.out, world_size=2, last_step=steps, context=log[-3000:])
    assert any(m["step"] > step for m in metrics)
    assert f"job {job.id} (start 2)" in log  # the same job id, the same output_dir
    return step, log


@pytest.mark.slow
@pytest.mark.multiproc
def test_usr1_from_scheduler_checkpoints_requeues_and_resumes(slurm, digits_data_dir, tmp_path):
    """`scancel --signal=USR1` is what `--signal=USR1@120` does before the time limit: every rank
    checkpoints, train.sbatch sees preempted.json and requeues the job, which resumes."""
    steps = 120
    over = [f"train.steps={steps}", "logging.every=2", "checkpoint.every=1000", "eval.every=1000"]
    job = Job(slurm, tmp_path, [*_data(digits_data_dir), *over])
    job.wait_step(10)
    slurm.scancel("--signal=USR1", str(job.id))
    step, log = _preempt_and_resume(job, steps)
    assert step >= 10
    assert '"signal": "SIGUSR1"' in log and f"requeueing job {job.id}" in log, log[-3000:]
    # SLURM signals the srun tasks (slurm/node.sh), which forward SIGUSR1 to the ranks.
    assert "[node 0] SIGUSR1 -> ranks" in log and "[node 1] SIGUSR1 -> ranks" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.multiproc
def test_scontrol_requeue_sigterm_checkpoints_and_resumes(slurm, digits_data_dir, tmp_path):
    """`scontrol requeue` (like preemption with PreemptMode=REQUEUE): SLURM sends SIGTERM to every
    process of the job and requeues it itself; the ranks checkpoint within KillWait. The SIGTERM
    reaches the data-loader workers too, which must ignore it for the rank to save."""
    steps = 120
    over = [f"train.steps={steps}", "logging.every=2", "checkpoint.every=1000", "eval.every=1000"]
    job = Job(slurm, tmp_path, [*_data(digits_data_dir), *over, "data.workers=1"])
    job.wait_step(10)
    slurm.scontrol("requeue", str(job.id))
    step, log = _preempt_and_resume(job, steps)
    assert step >= 10
    assert "SIGTERM: waiting for the ranks to checkpoint" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.multiproc
def test_crash_on_one_node_fails_the_job_promptly_without_requeue(slurm, digits_data_dir, tmp_path):
    """A hard crash (SIGKILL) of the rank on the second node: the rank on the first node must not
    wait in a collective until the 30-minute process-group timeout. The job fails within
    seconds, is not requeued (it was not a preemption), and the last checkpoint stays loadable."""
    steps = 120
    over = [f"train.steps={steps}", "logging.every=2", "checkpoint.every=10", "eval.every=1000"]
    job = Job(slurm, tmp_path, [*_data(digits_data_dir), *over], extra_env={"VIT_DIST_FAULT": "kill@25:1"})
    start = time.monotonic()
    info = slurm.wait_job(job.id, lambda i: i.get("JobState") in TERMINAL, timeout=240)
    elapsed = time.monotonic() - start
    log = job.log()
    assert info["JobState"] == "FAILED", (info, log[-3000:])
    assert int(info["Restarts"]) == 0 and "requeueing" not in log, log[-3000:]
    assert "training failed" in log, log[-3000:]
    assert elapsed < 200, f"the job took {elapsed:.0f} s to fail after a crash\n{log[-3000:]}"
    metrics = read_jsonl(job.out / "metrics.jsonl")
    assert metrics and metrics[-1]["step"] < steps
    ckpts = sorted(p.name for p in (job.out / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    assert "step-00000020" in ckpts, ckpts  # the last complete checkpoint before the crash at 25
