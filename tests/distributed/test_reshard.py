"""A run converted at step 10 to another TP, PP or DP layout continues like the unconverted run.

``bigtrain convert`` carries fp32 weights, Adam moments and the Adam step through DeepSpeed's own engine (see
bigtrain/convert/engine.py), so in fp32 on CPU the continuation matches to float rounding (observed: identical
for TP2 PP2 → TP1, ≤ 5e-7 for TP1 → TP2 PP2, where the tensor-parallel reductions sum in another order).
The unconverted runs are the session's shared reference runs (tests/conftest.py: ref_run).
"""

import json

import pytest

from bigtrain.parallel.layouts import CPU_LAYOUTS
from tests.helpers import REF_ARGS, TINY, bigtrain, losses, metrics

# reference layout → the convert flags that produce it
FLAGS = {"tp2-pp2": ["--tp", "2", "--pp", "2"], "single": ["--tp", "1", "--pp", "1"],
         # one process ran ZeRO stage 0 (nothing to partition); two run the configured stage 1
         "dp2-zero1": ["--tp", "1", "--pp", "1", "--dp", "2"]}
TOLERANCE = 1e-4  # absolute, per logged loss


@pytest.mark.parametrize("src,dst", [("tp2-pp2", "single"), ("single", "tp2-pp2"), ("single", "dp2-zero1"),
                                     ("dp2-zero1", "single")])
def test_converted_run_continues_like_the_original(tmp_path, ref_run, src, dst):
    dst_n, dst_over = CPU_LAYOUTS[dst]
    dst_flags = FLAGS[dst]
    full, conv = ref_run(src), tmp_path / "conv"
    step10 = full / "checkpoints" / "step_00000010"
    out = conv / "checkpoints" / "step_00000010"
    proc = bigtrain("convert", "--input", str(step10), "--output", str(out), *dst_flags)
    assert "with optimizer state" in proc.stdout
    meta = json.loads((out / "bigtrain.json").read_text())
    assert meta["layout"]["tp"] == int(dst_flags[1]) and meta["layout"]["pp"] == int(dst_flags[3])
    assert meta["step"] == 10 and meta["optimizer_carried"] is True
    proc = bigtrain("train", TINY, "--run-dir", str(conv), *REF_ARGS, *dst_over, nproc=dst_n)
    assert "resumed from" in proc.stdout and "step_00000010" in proc.stdout
    assert [r["step"] for r in metrics(conv)] == list(range(11, 21))
    want, got = losses(full)[10:], losses(conv)
    assert max(abs(a - b) for a, b in zip(want, got)) <= TOLERANCE, list(zip(want, got))
