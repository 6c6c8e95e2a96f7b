"""Training-step overhead: bigtrain's real step (Trainer.train_step over the DeepSpeed engine, one process,
no parallelism) against a plain PyTorch loop on the same model, batch and optimizer, on CPU.

    DS_ACCELERATOR=cpu python tools/bench_step.py [--zero 0 1] [--rounds 8] [--steps 5]

Both run in this process, alternating step by step, so a noisy machine slows both alike; the ratio is
the median over adjacent (bigtrain, plain) pairs of their step-time ratio (``--rounds`` × ``--steps`` pairs). The plain loop does what a
step must: loader batch, forward, loss, backward, gradient-norm clip, AdamW step (same param groups,
hyper-parameters and LR schedule), zero_grad. Target: ratio ≤ 1.10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = ["model.n_layers=4", "model.d_model=256", "model.n_heads=8", "model.n_kv_heads=4", "model.ffn_hidden=704",
         "model.vocab_size=4096", "model.seq_len=128", "train.micro_batch_size=8", "train.global_batch_size=8",
         "data.path=[synthetic]", "checkpoint.interval=0", "train.max_steps=100000"]


def plain_loop(job, trainer):
    """The same model (same seed, same layer specs), AdamW and data, without DeepSpeed."""
    import torch

    from bigtrain.data.build import build_loader
    from bigtrain.model.llama import layer_specs, lm_loss
    from bigtrain.parallel.pipeline import SequentialModel
    from bigtrain.parallel.topology import model_parallel_config
    from bigtrain.train.trainer import _param_groups

    torch.manual_seed(job.train.seed)
    model = SequentialModel(layer_specs(job.model, model_parallel_config(job.parallel), job.train.seed), lm_loss)
    t = job.train
    opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    loader = build_loader(job, 0, 1, split="train")
    state = {"step": 0}

    def step():
        lr = trainer.lr_at(state["step"])
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = loader.next_batch()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        return float(loss.detach())

    return step


def bench(zero: int, rounds: int, steps: int, extra: list[str]) -> dict:
    import torch

    from bigtrain.config.job import load_job_config
    from bigtrain.train.trainer import Trainer

    job = load_job_config(str(REPO / "configs" / "tiny-cpu.yaml"), MODEL + [f"parallel.zero_stage={zero}"] + extra)
    run = tempfile.mkdtemp(prefix="bench_step_")
    trainer = Trainer(job, run)
    trainer.setup()
    trainer.callbacks = []
    plain = plain_loop(job, trainer)
    threads = torch.get_num_threads()

    def bt_step():
        out = trainer.train_step()
        trainer.step += 1
        return out["loss"]

    for _ in range(3):  # warm-up: allocator, optimizer state
        bt_step()
        plain()
    times = {"bigtrain": [], "plain": []}
    ratios = []
    for r in range(rounds * steps):
        # Alternate every step (and which goes first), so each pair shares the machine's load of the moment.
        pair = {}
        for name, fn in ((("bigtrain", bt_step), ("plain", plain)) if r % 2 == 0 else
                         (("plain", plain), ("bigtrain", bt_step))):
            t0 = time.perf_counter()
            fn()
            pair[name] = time.perf_counter() - t0
            times[name].append(pair[name])
        ratios.append(pair["bigtrain"] / pair["plain"])
    trainer.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"zero": zero, "threads": threads, "bigtrain_s": med["bigtrain"], "plain_s": med["plain"],
            "ratio": statistics.median(ratios), "ratio_min": min(times["bigtrain"]) / min(times["plain"]), "optimizer": type(trainer.engine.optimizer).__name__,
            "ran": trainer.engine.zero_optimization_stage(),
            "params": job.model.num_params(), "tokens": job.train.global_batch_size * job.model.seq_len}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zero", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="extra config overrides")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for z in args.zero:
        # One engine per process is simplest for DeepSpeed: run each stage in its own subprocess.
        import json
        import subprocess

        out = subprocess.run([sys.executable, __file__, "--child", str(z), str(args.rounds), str(args.steps),
                              *args.overrides], capture_output=True, text=True, env={**os.environ}, cwd=REPO, check=False)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"zero={z}: benchmark child failed")
        rows.append(json.loads(line[-1][7:]))
    r0 = rows[0]
    print(f"model {r0['params'] / 1e6:.1f}M params, {r0['tokens']} tokens/step, {r0['threads']} threads, "
          f"median of {args.rounds * args.steps} steps each, interleaved")
    print(f"{'ZeRO':>4} {'ran':>3} {'engine optimizer':<24} {'bigtrain ms':>11} {'plain ms':>9} {'ratio':>6} {'min/min':>7} "
          f"{'target':>12}")
    for r in rows:
        ok = "ok" if r["ratio"] <= 1.10 else "MISSED"
        print(f"{r['zero']:>4} {r['ran']:>3} {r['optimizer']:<24} {r['bigtrain_s'] * 1e3:11.1f} {r['plain_s'] * 1e3:9.1f} "
              f"{r['ratio']:6.3f} {r['ratio_min']:7.3f} {'≤ 1.10 ' + ok:>12}")
    print("ran: the ZeRO stage DeepSpeed ran (one process partitions nothing, so fp32 runs stage 0: "
          "ParallelConfig.zero_stage_at)")
    print("ratio: median over adjacent (bigtrain, plain) step pairs; min/min: fastest bigtrain step over fastest "
          "plain step; bigtrain/plain ms: medians")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import json
        import logging

        logging.disable(logging.WARNING)
        z, rounds, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print("RESULT " + json.dumps(bench(z, rounds, steps, sys.argv[5:])), flush=True)
    else:
        main()
