"""kill -9 of one rank: torchrun's supervisor (--max-restarts) restarts the job, which resumes from its last
complete checkpoint and logs the same sample ids and losses, bit for bit, as a run that was never
interrupted.

Rank 1 kills itself (SIGKILL) inside a save, through the BIGTRAIN_FAULT_KILL_IN_SAVE hook
(checkpoint/manager.py): the step and the point (within its DeepSpeed file, or after it) are drawn from
BIGTRAIN_TEST_SEED and printed, and the kill lands exactly there. The checkpoint being written is incomplete,
so the restart must go back to the one before it and replay the steps in between.
"""

import os
import random
import subprocess
import sys

from bigtrain.checkpoint.manager import FAULT_KILL_IN_SAVE, FAULT_KILL_MARKER
from tests.helpers import REPO, TINY, bigtrain, env_for_tests, metrics

INTERVAL = 3
COMMON = ["train.max_steps=14", "train.log_interval=1", f"checkpoint.interval={INTERVAL}", "model.n_layers=2",
          "parallel.tp=2"]
SEED = int(os.environ.get("BIGTRAIN_TEST_SEED", "18"))


def test_kill_one_rank_and_restart(tmp_path):
    ref = tmp_path / "ref"
    bigtrain("train", TINY, "--run-dir", str(ref), *COMMON, nproc=2)
    rng = random.Random(SEED)
    kill_step = rng.choice([6, 9, 12])
    rank1_bytes = (ref / "checkpoints" / f"step_{12:08d}" / "mp_rank_01_model_states.pt").stat().st_size
    point = rng.choice([f"ds-bytes={rng.randrange(1, rank1_bytes)}", "before-meta"])
    spec = f"{kill_step}:{point}:1"
    print(f"BIGTRAIN_TEST_SEED={SEED}: {FAULT_KILL_IN_SAVE}={spec}")

    run = tmp_path / "run"
    env = {**env_for_tests(), FAULT_KILL_IN_SAVE: spec}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "bigtrain", "train", TINY, "--run-dir", str(run), *COMMON]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    # Killed once, where the spec says; the restart found the hook spent.
    assert proc.stdout.count(f"{FAULT_KILL_IN_SAVE}={spec}: rank 1 kills itself (SIGKILL)") == 1, text[-4000:]
    assert "Signal 9 (SIGKILL)" in proc.stderr or "exitcode: -9" in proc.stderr, proc.stderr[-3000:]
    assert (run / FAULT_KILL_MARKER).read_text() == spec
    back = kill_step - INTERVAL
    assert proc.stdout.count("resumed from") == 1, proc.stdout
    assert f"resumed from {run}/checkpoints/step_{back:08d} at step {back}" in proc.stdout, proc.stdout
    got, want = metrics(run), metrics(ref)
    assert [r["step"] for r in got] == list(range(1, 15))
    assert [r["samples"] for r in got] == [r["samples"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
