"""`bigtrain finetune CONFIG --init HF_DIR --run-dir RUN [key=value ...]` run in this process (under torchrun for
TP / PP), followed by a check on every rank of what training left in memory: each frozen tensor bit-identical to
this rank's slice of the starting weights (its ZeRO-3 partition), and nothing but adapters trainable or in the
optimizer. Writes RUN/memory-rank{R}.json.

Usage: python lora_worker.py CONFIG HF_DIR RUN [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    config, init, run_dir, *overrides = sys.argv[1:]
    from bigtrain.convert import layout as L
    from bigtrain.finetune.run import run_finetune
    from bigtrain.convert.weights_io import read_full_weights

    from bigtrain.train.guard import SkippingAdamW

    trainer = run_finetune(config, overrides, init, run_dir)
    cfg, topo = trainer.job.model, trainer.topo
    start = read_full_weights(Path(init), "hf", cfg)
    report = {"frozen_identical": 0, "frozen_changed": [], "trainable": [], "frozen_adapters": [],
              "optimizer_params": None}
    named = list(trainer.engine.module.named_parameters())
    for name, p in named:
        if ".lora_" in name:
            (report["trainable"] if p.requires_grad else report["frozen_adapters"]).append(name)
            continue
        if p.requires_grad:
            report["trainable"].append(name)
        # ZeRO-3 keeps a partition of each tensor (whole on the one rank when world size is one per DP replica)
        full = p.ds_tensor.detach() if hasattr(p, "ds_tensor") else p.detach()
        want = L.shard(start[name], name, topo.tp, topo.tp_rank, cfg).to(p.dtype)
        if hasattr(p, "ds_tensor"):
            n = full.numel()
            want = want.flatten()[n * topo.dp_rank: n * (topo.dp_rank + 1)]
            full = full[: want.numel()]  # the last partition is padded
        if torch.equal(full.reshape(want.shape), want):
            report["frozen_identical"] += 1
        else:
            report["frozen_changed"].append(name)
    opt = trainer.engine.optimizer
    if isinstance(opt, SkippingAdamW):  # no ZeRO wrapper: the optimizer holds the parameters themselves
        ids = {id(p) for group in opt.param_groups for p in group["params"]}
        report["optimizer_params"] = sorted(name for name, p in named if id(p) in ids)
    (Path(run_dir) / f"memory-rank{trainer.info.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
