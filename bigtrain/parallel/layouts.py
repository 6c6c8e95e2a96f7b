"""The parallel layouts a CPU machine can run with the tiny recipe (configs/tiny-cpu.yaml), each of which must
train like one process: what tools/compare_layouts.py compares and tests/distributed/test_layouts.py checks.

name: (processes, config overrides). With 2 processes and no TP or PP the extra process is a data-parallel
replica, so ``dp2-zeroN`` runs ZeRO stage N over two replicas.
"""

from __future__ import annotations

CPU_LAYOUTS: dict[str, tuple[int, list[str]]] = {
    "single": (1, []),
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "tp2-pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "dp2-zero2": (2, ["parallel.zero_stage=2"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
    "dp2-tp2": (4, ["parallel.tp=2", "parallel.zero_stage=1"]),
    "dp2-pp2": (4, ["parallel.pp=2", "parallel.zero_stage=1"]),
    # train.compile on every layout it allows (tests/unit/test_config.py: the one refused)
    "tp2-pp2-compile": (4, ["parallel.tp=2", "parallel.pp=2", "train.compile=true"]),
    "compile-ckpt": (1, ["train.compile=true", "train.activation_checkpointing=true"]),
}
