"""The SLURM batch scripts on a real two-node SLURM cluster (tests/slurm_cluster.py: two network-namespace hosts
on a bridge, slurmctld + one slurmd each, two dummy GPUs per node through GRES, task/affinity CPU masks).

Every job is `sbatch --nodes 2 --ntasks-per-node 2 --gpus-per-node 2 --cpus-per-task 1` of a tiny model with
TP=2 x DP=2 (4 CPU ranks over gloo, across the two hosts), submitted from a directory other than the repo:
- train.sbatch completes, each rank where SLURM put it (host, local rank, GPUs, one CPU of its own), with the
  losses of the same job on one machine (4 processes);
- SIGTERM to the ranks (`scancel --signal=TERM`) reaches every rank on both nodes; the job saves, requeues
  itself, resumes from the save made at the signal and ends with the uninterrupted losses;
- `kill -9` of one rank ends the whole job (srun --kill-on-bad-exit) within 2 minutes (that job runs under
  --gpus-per-task=1: each task sees only its own GPU);
- deepspeed.sbatch (the deepspeed launcher's `--launcher slurm`) gives the same losses, through a SIGTERM to
  the batch shell alone (`scancel -b`), which the script passes on to every rank, and the requeue.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY, bigtrain, losses, metrics

SLURM = REPO / "cluster" / "slurm"
STEPS = 20
HOLD_AT = 5  # a preempted job holds after this step until its signal (the trainer's test hold): it saves exactly here
ARGS = [f"train.max_steps={STEPS}", "train.log_interval=1", "checkpoint.interval=30", "model.n_layers=2",
        "parallel.tp=2"]
ALLOC = ["--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]
PROBE = re.compile(r"placement: rank (\d+)/(\d+) host (\S+) local_rank (\d+) CUDA_VISIBLE_DEVICES=(\S+) "
                   r"cpus (\S+) master (\S+)")


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    """The same job on one machine: 4 processes."""
    run = tmp_path_factory.mktemp("slurm-ref") / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *ARGS, nproc=4)
    return losses(run)


def submit(cluster, script: str, work: Path, *extra: str, env: dict[str, str] | None = None, alloc=ALLOC) -> str:
    work.mkdir(parents=True, exist_ok=True)
    return cluster.sbatch(SLURM / script, TINY, str(work / "run"), *ARGS, *extra, workdir=work, sbatch_args=alloc,
                          extra_env={"BIGTRAIN_PROBE": "1", **(env or {})})


def placements(log: str) -> list[tuple]:
    return sorted((int(r), int(w), host, int(lr), cvd, cpus, master)
                  for r, w, host, lr, cvd, cpus, master in PROBE.findall(log))


def ranks_of(job: str) -> dict[int, int]:
    """SLURM_PROCID -> pid of the job's training processes (the namespaces share this machine's pid space)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (p / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and "SLURM_PROCID" in env and " train " in cmd and "bigtrain" in cmd:
            out[int(env["SLURM_PROCID"])] = int(p.name)
    return out


def wait_for_steps(run: Path, n: int, cluster, job: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= n):
        assert time.monotonic() < deadline, cluster.job_log(job, 60)
        assert cluster.fields(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), cluster.job_log(job, 60)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def full_job(slurm_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm-full")
    job = submit(slurm_cluster, "train.sbatch", work)
    fields = slurm_cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=400)
    return job, fields, work, slurm_cluster.job_log(job)


def test_train_sbatch_on_two_nodes(full_job, one_machine):
    job, fields, work, log = full_job
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log[-5000:]
    assert fields["NumNodes"] == "2" and fields["NumTasks"] == "4", fields
    assert "training finished with exit code 0" in log
    assert [r["step"] for r in metrics(work / "run")] == list(range(1, STEPS + 1))
    placed = placements(log)
    assert [p[:2] for p in placed] == [(r, 4) for r in range(4)], log[-3000:]
    # ranks 0-1 on node1, 2-3 on node2 (block distribution); local rank = rank within the node; every task
    # sees its node's two GPUs (--gpus-per-node) and holds one CPU of its own (--cpus-per-task=1).
    assert [(p[2], p[3]) for p in placed] == [("node1", 0), ("node1", 1), ("node2", 0), ("node2", 1)], placed
    assert {p[4] for p in placed} == {"0,1"}, placed
    for node in ("node1", "node2"):
        cpus = [p[5] for p in placed if p[2] == node]
        assert len(set(cpus)) == 2 and all(re.fullmatch(r"\d+", c) for c in cpus), placed
    assert {p[6] for p in placed} == {f"node1:{29500 + int(job) % 1000}"}
    assert losses(work / "run") == one_machine


def preempt_requeue_resume(cluster, script: str, work: Path, *scancel: str) -> str:
    """Submit, send SIGTERM with `scancel *scancel JOB` once training is under way, check every rank got it
    and saved, that the job requeued itself, then let it start again; returns the final job log."""
    from bigtrain.train.trainer import HELD_FILE, HOLD_ENV

    run = work / "run"
    job = submit(cluster, script, work, env={HOLD_ENV: str(HOLD_AT)})
    deadline = time.monotonic() + 240
    while not (run / HELD_FILE).exists():  # every rank waits at HOLD_AT for the stop request
        assert time.monotonic() < deadline, cluster.job_log(job, 60)
        assert cluster.fields(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), cluster.job_log(job, 60)
        time.sleep(0.2)
    cluster.run("scancel", *scancel, "--signal=TERM", job)
    fields = cluster.wait(job, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    log = cluster.job_log(job)
    assert fields["JobState"] == "PENDING" and fields["Restarts"] == "1", log[-4000:]
    got = sorted(set(re.findall(r"rank (\d) on (node\d) got signal 15", log)))
    assert got == [("0", "node1"), ("1", "node1"), ("2", "node2"), ("3", "node2")], log[-4000:]
    saved = re.search(r"received signal 15: saving at step (\d+)", log)
    assert saved and int(saved.group(1)) == HOLD_AT, log[-4000:]
    step = int(saved.group(1))
    assert f"stopped early (job={job} attempt=0 step={step} signal=15); requeueing job {job}" in log
    cluster.start_now(job)
    fields = cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=400)
    log = cluster.job_log(job)
    assert fields["JobState"] == "COMPLETED", (fields, log[-3000:], cluster.daemon_logs())
    assert f"resumed from {run}/checkpoints/step_{step:08d} at step {step}" in log and "attempt 2" in log
    assert [r["step"] for r in metrics(run)] == list(range(1, STEPS + 1))
    return log


def test_sigterm_to_the_ranks_saves_requeues_and_resumes(slurm_cluster, full_job, tmp_path):
    """`scancel --signal=TERM JOB`: SLURM signals every step's tasks, i.e. each rank on both nodes."""
    preempt_requeue_resume(slurm_cluster, "train.sbatch", tmp_path)
    _, _, full, _ = full_job
    assert losses(tmp_path / "run") == losses(full / "run")


def test_kill_9_of_one_rank_ends_the_whole_job(slurm_cluster, tmp_path):
    """Also the --gpus-per-task=1 layout: each task sees only its own GPU (bigtrain takes device 0 of what it
    sees; SLURM 22.05 wants --gpus-per-node = tasks per node beside it)."""
    run = tmp_path / "run"
    job = submit(slurm_cluster, "train.sbatch", tmp_path, "train.max_steps=100000", env={"BIGTRAIN_NO_REQUEUE": "1"},
                 alloc=["--ntasks-per-node=2", "--gpus-per-node=2", "--gpus-per-task=1", "--cpus-per-task=1"])
    wait_for_steps(run, 3, slurm_cluster, job)
    placed = placements(slurm_cluster.job_log(job))
    assert [(p[2], p[3], p[4]) for p in placed] == [("node1", 0, "0"), ("node1", 1, "1"), ("node2", 0, "0"),
                                                    ("node2", 1, "1")], placed
    ranks = ranks_of(job)
    assert sorted(ranks) == [0, 1, 2, 3], ranks
    os.kill(ranks[3], signal.SIGKILL)  # a rank on node2 dies; the others would wait for it in gloo
    killed = time.monotonic()
    fields = slurm_cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=150)
    took = time.monotonic() - killed
    log = slurm_cluster.job_log(job)
    assert fields["JobState"] == "FAILED" and took < 120, (took, fields, log[-3000:])
    assert not ranks_of(job), "ranks left running"
    assert "requeueing" not in log  # a failure is not a stop to be requeued
    print(f"job {job} ended {took:.1f} s after kill -9 of rank 3")


def test_deepspeed_sbatch_on_two_nodes_with_sigterm_to_the_batch_shell(slurm_cluster, full_job, tmp_path):
    """The deepspeed launcher's srun places the ranks; SIGTERM to the batch shell only (`scancel -b`) is passed
    on to every rank by the script; the requeued job resumes and ends with srun's losses."""
    log = preempt_requeue_resume(slurm_cluster, "deepspeed.sbatch", tmp_path, "--batch")
    assert "node1 slots=2\nnode2 slots=2" in log  # the hostfile made from the allocation
    assert "batch shell got SIGTERM; passing it to every rank" in log
    placed = placements(log)  # both attempts
    assert len(placed) == 8 and sorted({(p[0], p[2], p[3]) for p in placed}) == [
        (0, "node1", 0), (1, "node1", 1), (2, "node2", 0), (3, "node2", 1)], placed
    _, _, full, _ = full_job
    assert losses(tmp_path / "run") == losses(full / "run")  # the same job as srun's
