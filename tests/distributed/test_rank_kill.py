"""kill -9 of one rank at a random step: torchrun's supervisor (--max-restarts) restarts the job, which
resumes from its last complete checkpoint and logs the same sample ids and losses, bit for bit, as a run
that was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, TINY, bigtrain, env_for_tests, metrics

COMMON = ["train.max_steps=14", "train.log_interval=1", "checkpoint.interval=3", "model.n_layers=2",
          "parallel.tp=2"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The worker process of the given RANK among the descendants of the torchrun agent."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for pid, ppid in zip(out[::2], out[1::2]):
        children.setdefault(int(ppid), []).append(int(pid))
    todo, seen = [parent], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children.get(p, []))
    for p in seen[1:]:
        try:
            env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RESTART_COUNT=0" in env:
            return p
    return None


def test_kill_one_rank_and_restart(tmp_path):
    ref = tmp_path / "ref"
    bigtrain("train", TINY, "--run-dir", str(ref), *COMMON, nproc=2)
    run = tmp_path / "run"
    kill_at = random.Random(os.getpid()).randint(4, 10)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "bigtrain", "train", TINY, "--run-dir", str(run), *COMMON]
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        agent = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env_for_tests(), cwd=REPO)
        killed = False
        deadline = time.time() + 300
        while agent.poll() is None and time.time() < deadline:
            rows = metrics(run) if (run / "metrics.jsonl").exists() else []
            if not killed and rows and rows[-1]["step"] >= kill_at:
                pid = _rank_pid(agent.pid, 1)
                assert pid, "rank 1 not found"
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        agent.wait(timeout=60)
    text = log.read_text()
    assert killed and agent.returncode == 0, text[-3000:]
    assert "resumed from" in text
    got, want = metrics(run), metrics(ref)
    assert [r["step"] for r in got] == list(range(1, 15))
    assert [r["samples"] for r in got] == [r["samples"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
