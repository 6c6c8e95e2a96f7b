"""Every script under tools/ runs and prints its measurement beside its reference, here at the smallest sizes
they take (the numbers at real sizes are in the issue notes; these runs prove the scripts work and check what
does not depend on the machine's speed: measured against planned memory, layouts against one process)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import python


def tool(script: str, *args: str) -> str:
    """The script's stdout, run as a user runs it: a new interpreter (the scripts start their own processes)."""
    return python([script], *args, fresh=True).stdout


def row(out: str, label: str) -> list[float]:
    """The numbers of the table row that starts with ``label``."""
    line = next((ln for ln in out.splitlines() if ln.startswith(label)), None)
    assert line is not None, f"no row {label!r} in:\n{out[-3000:]}"
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", line[len(label):])]


def test_compare_layouts(tmp_path):
    out = tool("tools/compare_layouts.py", "--steps", "3", "--layouts", "tp2")  # each layout: tests/distributed
    for name in ("single", "tp2"):
        loss, grad_norm = row(out, f"{name} ")
        assert loss <= 2e-6 and grad_norm <= 2e-6, out  # as tests/distributed/test_layouts.py
    assert "FAIL" not in out


def test_bench_zero_memory():
    """Also the README's bucket sizes: DeepSpeed's default buckets hold ~2 GB per rank (observed 2000 MB at DP=2,
    fp32, ZeRO-1), `parallel.bucket_elements=5000000` ~20 MB."""
    buffers = {}
    for elems in ("0", "5000000"):
        out = tool("tools/bench_zero_memory.py", "--precision", "fp32", "--stages", "1", "--bucket-elems", elems)
        params, grads, optim, total, paper, ratio, buffers[elems] = row(out, "fp32     1 DeepSpeedZeroOptimizer")
        assert (params, grads, optim, paper) == (4.0, 4.0, 6.0, 14.0) and abs(ratio - 1) < 0.1, out
        assert re.search(r"largest deviation from the paper: \d+\.\d%", out)
    assert 1000 <= buffers["0"] <= 2100 and buffers["5000000"] <= 40, buffers


def test_bench_lora():
    out = tool("tools/bench_lora.py", "--config", "configs/tiny-cpu.yaml", "--seq-len", "64", "--steps", "1",
               "--rank", "4")
    # the optimizer state measured from the optimizer is what the plan says, for full training and for LoRA
    assert row(out, "optimizer state (measured) (MiB)") == row(out, "optimizer state (plan) (MiB)"), out
    full, lora, ratio = row(out, "step time (ms)")
    assert full > 0 and lora > 0 and ratio == pytest.approx(lora / full, abs=1e-3)
    assert "7b LoRA r16 all" in out


def test_bench_step():
    out = tool("tools/bench_step.py", "--zero", "0", "--rounds", "1", "--steps", "2", "--overhead-only",
               "model.n_layers=2", "model.seq_len=64")
    bigtrain_ms, plain_ms, ratio, _, target = row(out, "   0   0 ")  # ZeRO 0, ran as 0
    assert bigtrain_ms > 0 and plain_ms > 0 and ratio > 0 and target == 1.10, out


def test_bench_checkpoint(tmp_path):
    out = tool("tools/bench_checkpoint.py", "--params-m", "2", "--repeat", "1", "--dir", str(tmp_path))
    seconds, gbps, x_dd = row(out, "bigtrain save (engine + bigtrain.json)")
    assert seconds > 0 and gbps > 0 and x_dd > 0
    assert row(out, "dd write, conv=fdatasync (the disk)")[2] == 1.0 and "target: save" in out


def test_bench_hf_convert(tmp_path):
    out = tool("tools/bench_hf_convert.py", "--layers", "1", "--dir", str(tmp_path))
    assert row(out, "transformers load + save (reference)")[1] == 1.0
    for name in ("bigtrain import-hf", "bigtrain export-hf (+ logits check)"):
        seconds, x_ref, gb, *_ = row(out, name)
        assert seconds > 0 and x_ref > 0 and gb > 0, out


def test_bench_data():
    out = tool("tools/bench_data.py", "--copies", "1", "--repeat", "1", "--workers", "1", "--large-shard-gb", "0",
               "--loader-batches", "10", "--no-warmup", "--seq-len", "256", "--micro-batch-size", "2",
               "--vocab-size", "1000")
    tokens_s, per_core, eff, *_ = row(out, "      1 ")  # 1 worker
    assert tokens_s == per_core > 0 and eff == 1.0, out
    assert re.search(r"loader: seq_len=256 micro_batch=2: 5,120 tokens", out)


def test_bench_preprocess(tmp_path):
    out = tool("tools/bench_preprocess.py", "--sizes", "2", "--skip-large", "--tokenizer-sample-mb", "1",
               "--vocab-size", "500", "--wait-idle", "0", "--work", str(tmp_path))
    raw, one, two = (row(out, label)[0] for label in ("raw encode 2 threads", "bigtrain 1 worker",
                                                      "bigtrain 2 workers"))
    assert one == two > raw, out  # the same corpus both times; bigtrain's tokens add one EOS per document
    assert "== targets ==" in out and "peak PSS" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU it runs the real benchmark (minutes): run it by hand")
def test_bench_gpu_says_it_skipped():
    out = tool("tools/bench_gpu.py")
    assert "no CUDA GPU on this machine: skipped" in out
