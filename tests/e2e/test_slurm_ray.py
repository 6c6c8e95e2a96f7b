"""cluster/slurm/ray.sbatch on a real two-node SLURM cluster (tests/slurm_cluster.py: network-namespace hosts
node1, node2 with 2 CPUs each), `sbatch --nodes 2 --cpus-per-task 2`:

- the job's own Ray cluster (per-job ports, token, temp dirs) comes up on both nodes, preprocesses and
  trains 2 Ray Train workers; SIGUSR1 to the batch shell (what `--signal=B:USR1@120`
  sends before the time limit) reaches the driver, the workers save at the end of their step, the job
  requeues itself (and exits 0) and the next attempt resumes from that save, ending with the losses of the
  same job on one machine (2 processes);
- when one node's Ray never joins, the job fails within RAY_JOIN_TIMEOUT with one line saying so.
"""

from __future__ import annotations

import json
import re
import sys
import time

from tests.helpers import REPO, TINY, bigtrain, losses, metrics

SCRIPT = REPO / "cluster" / "slurm" / "ray.sbatch"
# The driver takes the signal only when its main thread next runs Python (seconds, inside Ray Train's fit): the
# workers hold after HOLD_AT (the trainer's test hold) until the stop request arrives, so they save exactly there.
STEPS = 20
HOLD_AT = 8
ARGS = ["model.vocab_size=512", f"train.max_steps={STEPS}", "train.log_interval=1", "checkpoint.interval=100",
        "model.n_layers=2"]
ALLOC = ["--ntasks-per-node=1", "--cpus-per-task=2"]


def test_ray_sbatch_on_two_nodes_preempted_requeued_resumed(slurm_cluster, corpus_tokenizer_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    run, data = work / "run", work / "data"
    from bigtrain.train.trainer import HELD_FILE, HOLD_ENV

    env = {"INPUT": str(REPO / "data" / "python-docs.jsonl.gz"), "TOKENIZER": str(corpus_tokenizer_dir),
           "DATA": str(data), "NUM_WORKERS": "2", "RAY_JOIN_TIMEOUT": "120", HOLD_ENV: str(HOLD_AT)}
    job = slurm_cluster.sbatch(SCRIPT, TINY, str(run), *ARGS, workdir=work, sbatch_args=ALLOC, extra_env=env)
    deadline = time.monotonic() + 400
    while not (run / HELD_FILE).exists():
        assert time.monotonic() < deadline, slurm_cluster.job_log(job, 80)
        assert slurm_cluster.fields(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), \
            slurm_cluster.job_log(job, 80)
        time.sleep(0.3)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    fields = slurm_cluster.wait(job, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, timeout=240, restarts=1)
    log = slurm_cluster.job_log(job)
    assert fields["JobState"] == "PENDING", (fields, log[-5000:])
    m = re.search(r"received signal 10: saving at step (\d+) and stopping", log)
    assert m and "requeueing job" in log, log[-5000:]
    saved = int(m.group(1))
    assert saved == HOLD_AT and (run / "checkpoints" / f"step_{saved:08d}").is_dir()
    info = json.loads((run / ".ray-cluster" / job / "head.json").read_text())
    assert info["host"] == "node1" and 6379 not in info["ports"].values()
    assert re.search(r"Ray cluster up at \S+ with 2 node\(s\)", log)

    fields = slurm_cluster.start_now(job)
    fields = slurm_cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=400)
    log = slurm_cluster.job_log(job)
    assert fields["JobState"] == "COMPLETED", (fields, log[-5000:])
    assert f"resumed from {run}/checkpoints/step_{saved:08d}" in log
    assert [r["step"] for r in metrics(run)] == list(range(1, STEPS + 1))
    ref = tmp_path / "one-machine"
    bigtrain("train", TINY, "--run-dir", str(ref), f"data.path={data}", *ARGS, nproc=2)
    assert losses(run) == losses(ref)


def test_ray_sbatch_fails_fast_when_a_node_never_joins(slurm_cluster, tmp_path):
    # BIGTRAIN through a wrapper whose `launch ray-node --worker` never starts Ray (a node whose Ray hangs).
    wrapper = tmp_path / "bigtrain-no-worker"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" --worker "*) exec sleep 600;; esac\n'
                       f'exec {sys.executable} -m bigtrain "$@"\n')
    wrapper.chmod(0o755)
    t0 = time.monotonic()
    job = slurm_cluster.sbatch(SCRIPT, TINY, str(tmp_path / "run"), *ARGS, workdir=tmp_path, sbatch_args=ALLOC,
                               extra_env={"BIGTRAIN": str(wrapper), "RAY_JOIN_TIMEOUT": "20"})
    fields = slurm_cluster.wait(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    took = time.monotonic() - t0
    log = slurm_cluster.job_log(job)
    assert fields["JobState"] == "FAILED" and took < 20 + 60, (took, fields, log[-3000:])
    assert re.search(r"only 1 of 2 Ray nodes joined at \S+ within RAY_JOIN_TIMEOUT=20 s", log), log[-3000:]
    assert "the Ray cluster did not come up" in log
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
