"""Shared helpers: run the real CLI in subprocesses (single process or under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def env_for_tests() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def bigtrain(*args: str, nproc: int = 1, timeout: int = 600, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "bigtrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "bigtrain", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or env_for_tests(),
                          cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r.get("split") == split]


def losses(run_dir: str | Path) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]
