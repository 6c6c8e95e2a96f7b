"""Per-rank model-state memory for ZeRO 0/1/2/3 at DP = 2 against the ZeRO paper's formulas (CPU).

    DS_ACCELERATOR=cpu python tools/bench_zero_memory.py [--precision bf16 fp32] [--bucket-elems 0]

Each stage runs under torchrun with 2 processes through ``build_engine`` (the trainer's engine) and
``bigtrain.plan.measure``: after one optimizer step, in the middle of the next step's gradient
accumulation (every state live), the live tensors' storages are enumerated, deduplicated by data_ptr
and sorted into parameters, gradients and optimizer state; DeepSpeed's communication buckets and any
other live tensor are shown apart ("buffers/other"). Formulas (Rajbhandari et al. 2020, Fig. 1, with
Ψ parameters, Nd = 2, K = 12 for the fp32 master copy + Adam's m and v):
ZeRO-0 (2+2+K)Ψ, ZeRO-1 2Ψ+2Ψ+KΨ/Nd, ZeRO-2 2Ψ+(2+K)Ψ/Nd, ZeRO-3 (2+2+K)Ψ/Nd in bf16; in fp32 the 2s are
4s and ZeRO-0 has K = 8 (the parameters are their own master copy). Target: within 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["model.n_layers=4", "model.d_model=512", "model.n_heads=8", "model.n_kv_heads=8", "model.ffn_hidden=1536",
         "model.vocab_size=8192", "model.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=8"]


def paper(stage: int, precision: str, nd: int) -> float:
    """Bytes per parameter on one rank."""
    p = 2 if precision == "bf16" else 4
    k = 8 if (precision == "fp32" and stage == 0) else 12
    return [p + p + k, p + p + k / nd, p + (p + k) / nd, (p + p + k) / nd][stage]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--bucket-elems", type=int, default=0,
                    help="parallel.bucket_elements: ZeRO reduce/all-gather/prefetch bucket size in elements "
                         "(0: DeepSpeed's 5e8 default)")
    args = ap.parse_args()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_zero_"))
    rows = []
    for prec in args.precision:
        for stage in args.stages:
            out = tmp / f"{prec}-{stage}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "bigtrain.plan.measure", str(REPO / "configs" / "tiny-cpu.yaml"), *MODEL,
                   f"parallel.zero_stage={stage}", f"train.precision={prec}",
                   f"parallel.bucket_elements={args.bucket_elems}", "--out", str(out)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO)
            if proc.returncode:
                print(proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"ZeRO-{stage} {prec}: measurement failed")
            rows.append((prec, stage, json.loads(out.read_text())["ranks"][0]))
    sys.path.insert(0, str(REPO))
    from bigtrain.config.job import load_job_config

    n = load_job_config(str(REPO / "configs" / "tiny-cpu.yaml"), MODEL).model.num_params()
    print(f"model Ψ = {n / 1e6:.1f}M parameters, DP = 2, rank 0, bytes per parameter "
          f"(buckets: {args.bucket_elems or 'DeepSpeed default 5e8'} elements)")
    print(f"{'prec':<5} {'ZeRO':>4} {'optimizer wrapper':<30} {'params':>7} {'grads':>6} {'optim':>6} "
          f"{'total':>6} {'paper':>6} {'ratio':>6} {'buffers/other MB':>17}")
    worst = 0.0
    for prec, stage, r in rows:
        want = paper(stage, prec, 2)
        got = r["model_state"] / n
        worst = max(worst, abs(got / want - 1))
        print(f"{prec:<5} {stage:>4} {r['optimizer_class']:<30} {r['params'] / n:7.2f} {r['grads'] / n:6.2f} "
              f"{r['optimizer'] / n:6.2f} {got:6.2f} {want:6.2f} {got / want:6.3f} "
              f"{(r['buffers'] + r['other']) / 1e6:17.1f}")
    print(f"largest deviation from the paper: {worst:.1%} (target within 10%)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
