"""GPU throughput and MFU: the 125m and 1b recipes on one GPU, bf16, seq 2048, flash attention through
SDPA, activation checkpointing off and on. On a machine without CUDA it says so and exits 0.

    python tools/bench_gpu.py [--configs configs/125m.yaml configs/1b.yaml] [--steps 10] [--warmup 3]

Each case runs in its own process through the trainer's real step (``Trainer.setup`` then
``Trainer.train_step``: DeepSpeed engine, ZeRO-1, bf16, synthetic tokens), with the recipe's micro
batch and gradient accumulation 1 (global batch = micro batch), under
``sdpa_kernel(FLASH_ATTENTION)`` so a fall-back to the math kernel fails loudly instead of running
slowly. tokens/s = micro_batch × seq_len / median step time; MFU = tokens/s × flops_per_token /
the GPU's bf16 peak (bigtrain.train.flops; activation recomputation is not counted as model FLOPs).
Target: ≥ 50 % MFU for 1b on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(config: str, ckpt: bool, steps: int, warmup: int, extra: list[str]) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bigtrain.config.job import load_job_config
    from bigtrain.train.flops import flops_per_token, peak_flops
    from bigtrain.train.trainer import Trainer

    base = load_job_config(config, extra)
    mbs = base.train.micro_batch_size
    job = load_job_config(config, ["data.path=[synthetic]", "tokenizer=null", "model.seq_len=2048",
                                   "train.precision=bf16", f"train.global_batch_size={mbs}",
                                   f"train.activation_checkpointing={'true' if ckpt else 'false'}",
                                   "train.eval_interval=0", "checkpoint.interval=0", *extra, f"train.global_batch_size={mbs}"])
    trainer = Trainer(job, tempfile.mkdtemp(prefix="bench_gpu_"))
    trainer.setup()
    trainer.callbacks = []
    times = []
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step()  # returns a Python float loss: synchronises
            torch.cuda.synchronize()
            trainer.step += 1
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    name = torch.cuda.get_device_name()
    tps = mbs * job.model.seq_len / dt
    peak = peak_flops(name)
    mem = torch.cuda.max_memory_allocated() / 2**30
    trainer.close()
    return {"config": Path(config).stem, "ckpt": ckpt, "gpu": name, "micro_batch": mbs, "step_s": dt,
            "tokens_per_s": tps, "mfu": tps * flops_per_token(job.model) / peak if peak else None,
            "max_mem_gib": mem, "params_m": job.model.num_params() / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=[str(REPO / "configs" / "125m.yaml"), str(REPO / "configs" / "1b.yaml")])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. train.micro_batch_size=4")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine: skipped the GPU throughput/MFU benchmark "
              "(run it on a GPU machine: python tools/bench_gpu.py)")
        return
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    rows = []
    for cfg in args.configs:
        for ckpt in (False, True):
            proc = subprocess.run([sys.executable, __file__, "--child", cfg, str(int(ckpt)), str(args.steps),
                                   str(args.warmup), *args.overrides], capture_output=True, text=True, env=env, check=False,
                                  cwd=REPO)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{Path(cfg).stem} checkpointing={'on' if ckpt else 'off'}: failed\n{proc.stderr[-3000:]}",
                      file=sys.stderr)
                continue
            rows.append(json.loads(line[-1][7:]))
    if not rows:
        raise SystemExit("bench_gpu: every case failed")
    print(f"GPU: {rows[0]['gpu']}; bf16, seq 2048, SDPA flash, ZeRO-1, 1 GPU, median of {args.steps} steps")
    print(f"{'config':<7} {'params':>8} {'act. ckpt':>9} {'micro':>5} {'step s':>8} {'tokens/s':>10} {'MFU':>6} "
          f"{'peak mem GiB':>12}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{r['config']:<7} {r['params_m']:7.0f}M {'on' if r['ckpt'] else 'off':>9} {r['micro_batch']:>5} "
              f"{r['step_s']:8.3f} {r['tokens_per_s']:10,.0f} {mfu:>6} {r['max_mem_gib']:12.1f}")
    print("target: MFU ≥ 50% for 1b on an H100 (MFU counts model FLOPs only: recomputation is not credited)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import logging

        logging.disable(logging.WARNING)
        res = child(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
        print("RESULT " + json.dumps(res), flush=True)
    else:
        main()
