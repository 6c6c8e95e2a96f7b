"""LoRA against full fine-tuning: trainable parameters, optimizer memory per rank and step time.

    DS_ACCELERATOR=cpu python tools/bench_lora.py [--config configs/125m.yaml] [--seq-len 512] [--steps 5]
                                                 [--rank 16] [--targets q,k,v,o,gate,up,down]

Measured: the recipe's model (synthetic data, fp32, one process, no ZeRO partitioning) trained for ``--steps``
steps after two warm-up steps, each case in a fresh process so peak RSS is its own: the optimizer's state
tensors counted from the optimizer itself, the median step time, the process's peak RSS. The same two jobs
through ``bigtrain plan``'s estimate are printed beside the measurement (model state per rank), and the plan's
trainable parameters and per-rank optimizer memory for the 1b and 7b recipes on 8 H100s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MiB = 1024**2


def case_overrides(args, lora: bool) -> list[str]:
    out = [f"model.seq_len={args.seq_len}", "train.micro_batch_size=1", "train.global_batch_size=1",
           "train.precision=fp32", "data.path=[synthetic]", "tokenizer=null", "checkpoint.interval=0",
           "train.eval_interval=0", "train.max_steps=100000"]
    if lora:
        out += [f"lora.rank={args.rank}", f"lora.targets=[{args.targets}]"]
    return out


def run_case(args, lora: bool) -> dict:
    import torch

    from bigtrain import quiet
    from bigtrain.config.job import load_job_config
    from bigtrain.data.build import build_loader
    from bigtrain.plan.estimate import model_state, stage_tensors
    from bigtrain.train.module import train_module
    from bigtrain.train.trainer import build_engine

    quiet.install()
    job = load_job_config(args.config, case_overrides(args, lora))
    built = build_engine(job)  # random base weights: the timing and memory do not depend on their values
    engine = built.engine
    module = train_module(engine, built.topo, built.info.device, 1)
    loader = build_loader(job, 0, 1, split="train")
    params = list(engine.module.parameters())
    times = []
    for i in range(2 + args.steps):
        module.set_lr(job.train.lr)
        t0 = time.perf_counter()
        module.train_batch(loader)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    opt = engine.optimizer
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    adapters = stage_tensors(job, 0, adapters=True)  # the plan counts from the tables, not from the module
    _, plan_grads, plan_optim = model_state(job, stage_tensors(job, 0) + adapters, 1, sum(adapters) if lora else None)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"case": "lora" if lora else "full", "params": sum(p.numel() for p in params), "trainable": trainable,
            "optimizer_state_bytes": state_bytes, "plan_optimizer_bytes": plan_optim,
            "plan_grad_bytes": plan_grads, "step_s": statistics.median(times),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def plan_rows() -> list[str]:
    from bigtrain.config.job import load_job_config
    from bigtrain.plan.estimate import make_plan

    lines = []
    for recipe in ("1b", "7b"):
        path = REPO / "configs" / f"{recipe}.yaml"
        full = make_plan(load_job_config(path), nodes=1, gpus_per_node=8)
        lora = make_plan(load_job_config(path, ["lora.rank=16", "lora.targets=[q,k,v,o,gate,up,down]"]), nodes=1,
                         gpus_per_node=8)
        for name, p in (("full", full), ("LoRA r16 all", lora)):
            s = max(p.stages, key=lambda x: x.total_bytes)
            lines.append(f"  {recipe:>3} {name:<13} trainable {p.trainable_params / 1e6:10,.2f}M   optimizer/rank "
                         f"{s.optimizer_bytes / MiB:10,.1f} MiB   grads/rank {s.grad_bytes / MiB:9,.1f} MiB   "
                         f"model state/rank {s.model_state_bytes / MiB:9,.1f} MiB   step {p.step_time_s:.2f} s "
                         f"(tp={p.tp} pp={p.pp} dp={p.dp}, ZeRO-{p.zero_stage}, {p.precision})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "125m.yaml"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--case", choices=["full", "lora"], help=argparse.SUPPRESS)  # one case, in a child process
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args, args.case == "lora")), flush=True)
        return
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    results = {}
    for case in ("full", "lora"):
        cmd = [sys.executable, __file__, "--case", case, "--config", args.config, "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--rank", str(args.rank), "--targets", args.targets]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        results[case] = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    f, lo = results["full"], results["lora"]
    print(f"{Path(args.config).name}: seq_len {args.seq_len}, one sequence a step, fp32, one process; LoRA rank "
          f"{args.rank} on {args.targets}; median of {args.steps} steps after 2 warm-up steps")
    print(f"{'':32}{'full':>16}{'LoRA':>16}{'LoRA / full':>14}")
    rows = [("parameters", "params", 1e6, "M"), ("trainable parameters", "trainable", 1e6, "M"),
            ("optimizer state (measured)", "optimizer_state_bytes", MiB, "MiB"),
            ("optimizer state (plan)", "plan_optimizer_bytes", MiB, "MiB"),
            ("gradients (plan)", "plan_grad_bytes", MiB, "MiB"),
            ("step time", "step_s", 1e-3, "ms"), ("peak RSS", "peak_rss_bytes", MiB, "MiB")]
    for label, key, div, unit in rows:
        a, b = f[key] / div, lo[key] / div
        print(f"{label + ' (' + unit + ')':32}{a:16,.2f}{b:16,.2f}{(b / a if a else float('nan')):14.4f}")
    print("bigtrain plan, 1 node × 8 H100 (the recipes' layouts):")
    print("\n".join(plan_rows()))


if __name__ == "__main__":
    main()
