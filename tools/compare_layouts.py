"""Train the same model on the same data in every parallel layout and print how far each one's losses
and gradient norms are from the single-process run (the torchtitan-style loss compare).

    python tools/compare_layouts.py [--steps 10] [--config configs/tiny-cpu.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = {
    "single": (1, []),
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "tp2-pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "dp2-zero2": (2, ["parallel.zero_stage=2"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
}


def run(name: str, nproc: int, args: list[str], out: Path) -> list[dict]:
    run_dir = out / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "bigtrain", "train", *args[:1], "--run-dir", str(run_dir), *args[1:]]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line and "split" not in json.loads(line)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--config", default="configs/tiny-cpu.yaml")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    common = [a.config, f"train.max_steps={a.steps}", "train.log_interval=1", "checkpoint.interval=0",
              "model.n_layers=2", "train.grad_clip=0.5", *a.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(name, n, common + extra, Path(tmp)) for name, (n, extra) in LAYOUTS.items()}
    base = results["single"]
    print(f"{'layout':<10} {'max rel diff loss':>18} {'max rel diff grad_norm':>23}   ({a.steps} steps, fp32)")
    for name, rows in results.items():
        dl = max(abs(r["loss"] - b["loss"]) / abs(b["loss"]) for r, b in zip(rows, base))
        dg = max(abs(r["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"]) for r, b in zip(rows, base))
        print(f"{name:<10} {dl:>18.1e} {dg:>23.1e}")


if __name__ == "__main__":
    main()
