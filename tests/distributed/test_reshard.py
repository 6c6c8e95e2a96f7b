"""A run converted at step 8 to another TP, PP or DP layout continues like the unconverted run.

``bigtrain convert`` carries fp32 weights, Adam moments and the Adam step through DeepSpeed's own engine (see
bigtrain/convert/engine.py), so in fp32 on CPU the continuation matches to float rounding (observed: identical
for TP2 PP2 → TP1, ≤ 5e-7 for TP1 → TP2 PP2, where the tensor-parallel reductions sum in another order).
"""

import json

import pytest

from tests.helpers import TINY, bigtrain, losses, metrics

COMMON = ["train.max_steps=16", "train.log_interval=1", "checkpoint.interval=8", "checkpoint.keep=2",
          "model.n_layers=2"]
LAYOUTS = {"tp2pp2": (4, ["parallel.tp=2", "parallel.pp=2"], ["--tp", "2", "--pp", "2"]),
           "tp1pp1": (1, [], ["--tp", "1", "--pp", "1"]),
           # one process ran ZeRO stage 0 (nothing to partition); two run the configured stage 1
           "dp2": (2, [], ["--tp", "1", "--pp", "1", "--dp", "2"])}
TOLERANCE = 1e-4  # absolute, per logged loss


@pytest.mark.parametrize("src,dst", [("tp2pp2", "tp1pp1"), ("tp1pp1", "tp2pp2"), ("tp1pp1", "dp2"),
                                     ("dp2", "tp1pp1")])
def test_converted_run_continues_like_the_original(tmp_path, src, dst):
    src_n, src_over, _ = LAYOUTS[src]
    dst_n, dst_over, dst_flags = LAYOUTS[dst]
    full, conv = tmp_path / "full", tmp_path / "conv"
    bigtrain("train", TINY, "--run-dir", str(full), *COMMON, *src_over, nproc=src_n)
    step8 = full / "checkpoints" / "step_00000008"
    out = conv / "checkpoints" / "step_00000008"
    proc = bigtrain("convert", "--input", str(step8), "--output", str(out), *dst_flags)
    assert "with optimizer state" in proc.stdout
    meta = json.loads((out / "bigtrain.json").read_text())
    assert meta["layout"]["tp"] == int(dst_flags[1]) and meta["layout"]["pp"] == int(dst_flags[3])
    assert meta["step"] == 8 and meta["optimizer_carried"] is True
    proc = bigtrain("train", TINY, "--run-dir", str(conv), *COMMON, *dst_over, nproc=dst_n)
    assert "resumed from" in proc.stdout and "step_00000008" in proc.stdout
    assert [r["step"] for r in metrics(conv)] == list(range(9, 17))
    want, got = losses(full)[8:], losses(conv)
    assert max(abs(a - b) for a, b in zip(want, got)) <= TOLERANCE, list(zip(want, got))
