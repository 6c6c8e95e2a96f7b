"""Train the same model on the same data in every parallel layout and print how far each one's losses
and gradient norms are from the single-process run (the torchtitan-style loss compare).

    python tools/compare_layouts.py [--steps 10] [--config configs/tiny-cpu.yaml] [--layouts tp2 pp2 ...]
                                    [--max-rel-diff 1e-4] [key=value ...]

The layouts are bigtrain/parallel/layouts.py's (all by default; "single" is always run, as the reference). Exit
status 1 when a layout's loss or gradient norm is further than --max-rel-diff from the single process's
(the README's 1e-4 by default; fp32 on CPU is observed at ~1e-7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigtrain.parallel.layouts import CPU_LAYOUTS  # noqa: E402


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
    ap.add_argument("--layouts", nargs="+", choices=sorted(CPU_LAYOUTS), default=list(CPU_LAYOUTS))
    ap.add_argument("--max-rel-diff", type=float, default=1e-4)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    layouts = {name: CPU_LAYOUTS[name] for name in dict.fromkeys(["single", *a.layouts])}
    common = [a.config, f"train.max_steps={a.steps}", "train.log_interval=1", "checkpoint.interval=0",
              "model.n_layers=2", "train.grad_clip=0.5", *a.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(name, n, common + extra, Path(tmp)) for name, (n, extra) in layouts.items()}
    base = results["single"]
    print(f"{'layout':<16} {'max rel diff loss':>18} {'max rel diff grad_norm':>23}   ({a.steps} steps, fp32; "
          f"limit {a.max_rel_diff:.0e})")
    failed = []
    for name, rows in results.items():
        if len(rows) != len(base):
            sys.exit(f"{name} logged {len(rows)} steps, the single process {len(base)}")
        dl = max(abs(r["loss"] - b["loss"]) / abs(b["loss"]) for r, b in zip(rows, base))
        dg = max(abs(r["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"]) for r, b in zip(rows, base))
        if max(dl, dg) > a.max_rel_diff:
            failed.append(name)
        print(f"{name:<16} {dl:>18.1e} {dg:>23.1e}{'   FAIL' if name in failed else ''}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
