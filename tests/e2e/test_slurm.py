"""A real SLURM (munge + slurmctld + slurmd from Debian, on localhost; cluster/slurm/local-cluster.sh)
runs cluster/slurm/train.sbatch with 2 tasks to COMPLETED; the same job sent SIGTERM mid-run saves,
exits 143, requeues itself (`scontrol requeue`), resumes from that checkpoint and ends COMPLETED with
the losses of the uninterrupted job. cluster/slurm/deepspeed.sbatch (hostfile from the allocation)
gives the same losses, and cluster/slurm/ray.sbatch brings up Ray inside the allocation and runs
preprocessing and Ray Train training on it.

Set-up needs root (apt-get install, daemons); skipped with the reason where it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY, env_for_tests, losses, metrics

CLUSTER = REPO / "cluster" / "slurm" / "local-cluster.sh"
SCRIPT = REPO / "cluster" / "slurm" / "train.sbatch"
# Long enough that SIGTERM lands mid-run; the periodic checkpoint (50) is not the one resumed from.
ARGS = ["train.max_steps=100", "train.log_interval=1", "checkpoint.interval=50", "model.n_layers=2"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(conf: str) -> dict[str, str]:
    env = env_for_tests()
    env["SLURM_CONF"] = conf
    env["BIGTRAIN"] = f"{sys.executable} -m bigtrain"
    env["OMP_NUM_THREADS"] = "1"
    for k in list(env):
        if k.startswith("SLURM_") and k != "SLURM_CONF":
            env.pop(k)
    return env


@pytest.fixture(scope="module")
def slurm():
    have = all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not have and os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing it (apt-get) needs root")
    if not have and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root; not root here")
    # Short path: munge's socket lives below it.
    state = tempfile.mkdtemp(prefix="btslurm-", dir="/tmp")
    env = dict(os.environ, BIGTRAIN_SLURM_DIR=state, BIGTRAIN_SLURM_CPUS=str(max(2, os.cpu_count() or 2)))
    start = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, env=env, timeout=600)
    try:
        assert start.returncode == 0, start.stderr[-4000:]
        client = _env(f"{state}/slurm.conf")
        client["BIGTRAIN_TEST_SLURM_DIR"] = state  # for daemon logs in failure messages
        yield client
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def daemon_logs(env, lines: int = 40) -> str:
    out = []
    for name in ("slurmctld.log", "slurmd.log"):
        p = Path(env["BIGTRAIN_TEST_SLURM_DIR"]) / "log" / name
        if p.is_file():
            out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(out)


def job_fields(env, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=env,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(env, job_id: str, states: set[str], timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        f = job_fields(env, job_id)
        if f.get("JobState") in states:
            return f
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job_fields(env, job_id)}")


def sbatch(env, workdir: Path, run_dir: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", "--chdir", str(workdir), "--output", str(workdir / "job-%j.out"),
                           str(SCRIPT), TINY, str(run_dir), *ARGS],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def completed_job(slurm, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm-full")
    job = sbatch(slurm, work, work / "run")
    fields = wait_for(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    return job, fields, work


def test_sbatch_training_completes_with_two_tasks(completed_job):
    job, fields, work = completed_job
    log = (work / f"job-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-5000:]
    assert fields["NumTasks"] == "2" and fields["ExitCode"] == "0:0"
    assert "2 tasks" in log and "training finished with exit code 0" in log
    assert [r["step"] for r in metrics(work / "run")] == list(range(1, 101))


def test_sigterm_saves_requeues_and_resumes(slurm, completed_job, tmp_path):
    run = tmp_path / "run"
    job = sbatch(slurm, tmp_path, run)
    wait_for(slurm, job, {"RUNNING"}, timeout=120)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until training is under way, then preempt it
        if (run / "metrics.jsonl").exists() and len(metrics(run)) >= 5:
            break
        time.sleep(0.2)
    else:
        raise AssertionError((tmp_path / f"job-{job}.out").read_text()[-4000:])
    subprocess.run(["scancel", "--signal=TERM", job], check=True, env=slurm, timeout=30)
    fields = wait_for(slurm, job, {"PENDING", "COMPLETED", "FAILED"}, timeout=120)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert fields["JobState"] == "PENDING" and fields["Restarts"] == "1", log[-4000:]
    saved = re.search(r"received signal 15: saving at step (\d+)", log)
    assert saved and int(saved.group(1)) < 100, log[-4000:]
    assert "requeueing job" in log
    # SLURM holds a requeued job for ~2 minutes (BeginTime); let it start now, but only once the node has
    # finished cleaning up the first attempt (a job started on a node still COMPLETING can fail at launch).
    deadline = time.time() + 120
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=slurm,
                               timeout=30).stdout.split()
        if state and all(s.startswith("idle") for s in state):
            break
        time.sleep(0.5)
    # slurmd refuses ("Job N already killed, do not launch batch job") a relaunch that arrives within a
    # moment of the kill; SLURM's own hold is ~2 minutes, a few seconds suffice.
    time.sleep(10)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=slurm, timeout=30)
    fields = wait_for(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED", (fields, log[-3000:], daemon_logs(slurm))
    step = int(saved.group(1))
    assert f"resumed from {run}/checkpoints/step_{step:08d} at step {step}" in log
    assert "attempt 2" in log
    assert [r["step"] for r in metrics(run)] == list(range(1, 101))
    _, _, full = completed_job
    assert losses(run) == losses(full / "run")


def _run_to_end(env, script: Path, workdir: Path, *args: str, extra_env: dict[str, str] | None = None):
    proc = subprocess.run(["sbatch", "--parsable", "--chdir", str(workdir), "--output", str(workdir / "job-%j.out"),
                           str(script), *args], capture_output=True, text=True, env={**env, **(extra_env or {})},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    fields = wait_for(env, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=400)
    return fields, (workdir / f"job-{job}.out").read_text()


def test_deepspeed_sbatch_with_generated_hostfile(slurm, completed_job, tmp_path):
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if not os.path.exists(launcher):
        pytest.skip("the deepspeed launcher script is not installed")
    fields, log = _run_to_end(slurm, REPO / "cluster" / "slurm" / "deepspeed.sbatch", tmp_path, TINY,
                              str(tmp_path / "run"), *ARGS, extra_env={"DEEPSPEED": launcher})
    assert fields["JobState"] == "COMPLETED", log[-5000:]
    assert "localhost slots=2" in log  # the hostfile made from the allocation
    _, _, full = completed_job
    assert losses(tmp_path / "run") == losses(full / "run")  # same job as srun's


def test_ray_cluster_inside_an_allocation(slurm, tmp_path):
    if shutil.which("ray", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("the ray CLI is not installed")
    from tests.helpers import bigtrain

    bigtrain("tokenizer", "train", "--input", "data/python-docs.jsonl.gz", "--vocab-size", "512",
             "--output", str(tmp_path / "tok"))
    short = tempfile.mkdtemp(prefix="btrs-", dir="/tmp")  # Ray's socket paths must stay short
    try:
        fields, log = _run_to_end(
            slurm, REPO / "cluster" / "slurm" / "ray.sbatch", tmp_path, TINY, str(tmp_path / "run"),
            "model.vocab_size=512", "train.max_steps=10", "train.log_interval=1", "checkpoint.interval=5",
            "model.n_layers=2",
            extra_env={"INPUT": str(REPO / "data" / "python-docs.jsonl.gz"), "TOKENIZER": str(tmp_path / "tok"),
                       "DATA": str(tmp_path / "data"), "RAY": os.path.join(os.path.dirname(sys.executable), "ray"),
                       "RAY_TMPDIR": short, "RAY_PORT": str(_free_port()), "RAY_DASHBOARD_PORT": str(_free_port()),
                       "NUM_WORKERS": "2", "RAY_AUTH_MODE": "token"})
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert fields["JobState"] == "COMPLETED", log[-6000:]
    assert "preprocess: wrote" in log and "training finished with exit code 0" in log
    assert (tmp_path / "data" / "manifest.json").exists()
    assert [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 11))
