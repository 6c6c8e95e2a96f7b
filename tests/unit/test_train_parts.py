import math

import numpy as np
import pytest

from bigtrain.data.loader import DistributedWindowLoader
from bigtrain.data.sources import SyntheticSource
from bigtrain.model.config import ModelConfig
from bigtrain.train.flops import flops_per_token, peak_flops
from bigtrain.train.schedule import lr_factor


def test_schedule_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_flops_and_peak_table():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, ffn_hidden=128, vocab_size=100, seq_len=32)
    n = 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 100 * 64
    assert cfg.num_params(include_embedding=False) == n
    assert flops_per_token(cfg) == 6 * n + 12 * 2 * 4 * 16 * 32
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Some CPU") is None


def test_loader_order_does_not_depend_on_dp():
    src = SyntheticSource(256, 16, seed=3)
    one = DistributedWindowLoader(src, micro_batch_size=4, dp_rank=0, dp_size=1)
    a = [one.next_batch().input_ids for _ in range(2)]  # 8 samples
    two = [DistributedWindowLoader(src, micro_batch_size=2, dp_rank=r, dp_size=2) for r in range(2)]
    b = [[ld.next_batch().input_ids for ld in two] for _ in range(2)]
    flat_a = np.concatenate([x.numpy() for x in a])
    flat_b = np.concatenate([x.numpy() for step in b for x in step])
    assert (flat_a == flat_b).all()
    state = one.state_dict()
    again = DistributedWindowLoader(src, 4)
    again.load_state_dict(state)
    assert (again.next_batch().input_ids.numpy() == one.next_batch().input_ids.numpy()).all()


def test_synthetic_task_is_a_progression():
    w = SyntheticSource(50, 10, seed=1).window(7)
    d = np.diff(w) % 50
    assert len(w) == 11 and (d == d[0]).all() and 1 <= d[0] <= 7 and math.isfinite(float(w.sum()))


def test_cpu_threads_are_shared_by_the_local_ranks(monkeypatch):
    """Ranks on one CPU box split its cores (cluster/README.md), unless OMP_NUM_THREADS says otherwise."""
    from bigtrain.train import trainer

    calls = []
    monkeypatch.setattr(trainer.torch, "set_num_threads", calls.append)
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for local, want in (("4", 4), ("3", 5), ("32", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        trainer._set_cpu_threads()
        assert calls[-1] == want
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    trainer._set_cpu_threads()
    assert len(calls) == 3  # left to OpenMP's own setting
