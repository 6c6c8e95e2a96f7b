"""The two-node test cluster (tests/slurm_cluster.py) behaves like a real one: `sbatch -N 2` places two tasks
on each of node1 and node2, with the dummy GPUs and the CPU masks SLURM 22.05 gives, and a job that requeues
itself on two nodes comes back and completes.

Observed with Debian 12's slurm-wlm 22.05.8 (task/affinity, no cgroup device constraint, 2 CPUs + gpu:2 a node):
- `--gpus-per-node=2` and `--gres=gpu:2`: every task sees CUDA_VISIBLE_DEVICES=0,1, SLURM_STEP_GPUS=0,1 and
  SLURM_JOB_GPUS=0,1 (the node's GPUs; nothing hides them: no ConstrainDevices).
- `--gpus-per-task=1`: local task 0 sees CUDA_VISIBLE_DEVICES=0 and SLURM_STEP_GPUS=0, local task 1 sees 1 and 1
  (22.05's implicit --gpu-bind=per_task:1); SLURM_JOB_GPUS stays 0,1. The batch script itself sees 0,1.
- `--cpus-per-task` given to sbatch reaches srun: SLURM_CPUS_PER_TASK is set in the batch script, and srun
  (which reads it in 22.05) passes it on to the tasks.
- Affinity with `--cpus-per-task=1`, 2 tasks a node: local task 0 is bound to {0}, local task 1 to {1}
  ("implicit auto binding: cores"); with `--cpus-per-task=2`, 1 task a node: {0, 1}.
- Task placement is block: SLURM_PROCID 0, 1 on node1 (SLURM_LOCALID 0, 1), 2, 3 on node2.
"""

from __future__ import annotations

import json
import sys

import pytest

PROBE = r'''
import json, os, socket
e = os.environ.get
print("PROBE " + json.dumps({
    "host": socket.gethostname(), "procid": int(e("SLURM_PROCID")), "localid": int(e("SLURM_LOCALID")),
    "cvd": e("CUDA_VISIBLE_DEVICES"), "step_gpus": e("SLURM_STEP_GPUS"), "job_gpus": e("SLURM_JOB_GPUS"),
    "cpus_per_task": e("SLURM_CPUS_PER_TASK"), "affinity": sorted(os.sched_getaffinity(0)),
}), flush=True)
'''

# (sbatch runs a copy of the script from slurmd's spool, so the probe goes by its absolute path.)
BATCH = """#!/bin/bash
echo "BATCH host=$(hostname) cpus_per_task=${SLURM_CPUS_PER_TASK:-unset} cvd=${CUDA_VISIBLE_DEVICES:-unset}"
srun PYTHON PROBE
"""


def _probe(cluster, tmp_path, *sbatch_args: str):
    (tmp_path / "probe.py").write_text(PROBE)
    script = tmp_path / "probe.sbatch"
    script.write_text(BATCH.replace("PYTHON", sys.executable).replace("PROBE", str(tmp_path / "probe.py")))
    job = cluster.sbatch(script, workdir=tmp_path, nodes=2, sbatch_args=sbatch_args)
    fields = cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=60)
    log = cluster.job_log(job)
    assert fields["JobState"] == "COMPLETED", (fields, log, cluster.daemon_logs())
    tasks = sorted((json.loads(line[6:]) for line in log.splitlines() if line.startswith("PROBE ")),
                   key=lambda t: t["procid"])
    batch = next(line for line in log.splitlines() if line.startswith("BATCH "))
    return tasks, batch, fields


@pytest.mark.parametrize("gpus", [["--gpus-per-node=2"], ["--gpus-per-task=1"], ["--gres=gpu:2"]],
                         ids=["gpus-per-node", "gpus-per-task", "gres"])
def test_two_tasks_per_node_with_gpus_and_cpu_masks(slurm_cluster, tmp_path, gpus):
    tasks, batch, fields = _probe(slurm_cluster, tmp_path, "--ntasks-per-node=2", "--cpus-per-task=1", *gpus)
    assert fields["NodeList"] == "node[1-2]" and fields["NumTasks"] == "4"
    assert "host=node1" in batch and "cpus_per_task=1" in batch  # the batch script runs on the first node
    assert [(t["host"], t["procid"], t["localid"]) for t in tasks] == [
        ("node1", 0, 0), ("node1", 1, 1), ("node2", 2, 0), ("node2", 3, 1)]
    for t in tasks:
        assert t["cpus_per_task"] == "1", t  # sbatch's --cpus-per-task reached srun (22.05)
        assert t["affinity"] == [t["localid"]], t  # task/affinity: one core each, local task i on CPU i
        assert t["job_gpus"] == "0,1", t
        if gpus == ["--gpus-per-task=1"]:
            # 22.05 binds one GPU to each task: local task i sees GPU i only.
            assert t["cvd"] == str(t["localid"]) and t["step_gpus"] == str(t["localid"]), t
        else:
            assert t["cvd"] == "0,1" and t["step_gpus"] == "0,1", t


def test_cpus_per_task_two_gives_both_cores(slurm_cluster, tmp_path):
    tasks, batch, _ = _probe(slurm_cluster, tmp_path, "--ntasks-per-node=1", "--cpus-per-task=2",
                             "--gpus-per-node=2")
    assert "cpus_per_task=2" in batch
    assert [(t["host"], t["localid"], t["affinity"], t["cvd"]) for t in tasks] == [
        ("node1", 0, [0, 1], "0,1"), ("node2", 0, [0, 1], "0,1")]


REQUEUE = """#!/bin/bash
echo "attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $(hostname) of $SLURM_JOB_NODELIST"
srun --ntasks=2 --ntasks-per-node=1 hostname | sort | sed 's/^/task on /'
if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then
    scontrol requeue "$SLURM_JOB_ID" && echo "requeued"
    exit 143
fi
echo "finished"
"""


def test_requeue_on_two_nodes_comes_back_and_completes(slurm_cluster, tmp_path):
    script = tmp_path / "requeue.sbatch"
    script.write_text(REQUEUE)
    job = slurm_cluster.sbatch(script, workdir=tmp_path, nodes=2,
                               sbatch_args=["--ntasks-per-node=2", "--requeue", "--open-mode=append"])
    fields = slurm_cluster.wait(job, {"PENDING"}, restarts=1, timeout=60)
    assert fields["Restarts"] == "1", fields
    # Requeued jobs wait ~2 min (BeginTime); start_now waits until both nodes are idle, then StartTime=now.
    slurm_cluster.start_now(job, timeout=60)
    fields = slurm_cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    log = slurm_cluster.job_log(job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", (fields, log)
    assert fields["NodeList"] == "node[1-2]"
    assert "attempt 1 on node1 of node[1-2]" in log and "requeued" in log
    assert "attempt 2 on node1 of node[1-2]" in log and log.rstrip().endswith("finished")
    assert log.count("task on node1") == 2 and log.count("task on node2") == 2  # both attempts used both nodes
