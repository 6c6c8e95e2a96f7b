"""`bigtrain finetune CONFIG --init HF_DIR --run-dir RUN [key=value ...]` run in this process (under torchrun for
TP / PP), followed by a check on every rank of what training left in memory: each frozen tensor bit-identical to
this rank's slice of the starting weights, and nothing but adapters trainable. Writes RUN/memory-rank{R}.json.

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
    from bigtrain.train.init import read_init_weights

    trainer = run_finetune(config, overrides, init, run_dir)
    cfg, topo = trainer.job.model, trainer.topo
    start = read_init_weights(Path(init), "hf", cfg)
    report = {"frozen_identical": 0, "frozen_changed": [], "trainable": [], "frozen_adapters": []}
    for name, p in trainer.engine.module.named_parameters():
        if ".lora_" in name:
            (report["trainable"] if p.requires_grad else report["frozen_adapters"]).append(name)
            continue
        if p.requires_grad:
            report["trainable"].append(name)
        if torch.equal(p.detach(), L.shard(start[name], name, topo.tp, topo.tp_rank, cfg).to(p.dtype)):
            report["frozen_identical"] += 1
        else:
            report["frozen_changed"].append(name)
    (Path(run_dir) / f"memory-rank{trainer.info.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
