"""Document masking through the real trainer: the first step's loss is the token-weighted mean of its documents'
losses run one by one, and TP=2 × PP=2 (document tensors travel between pipeline stages, with activation
checkpointing) and DP=2 (ZeRO-1) give the single process's losses."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import TINY, bigtrain, documents_one_by_one, metrics
from tests.unit.test_data_loader import make_dataset

RTOL = 1e-5  # fp32; observed ~1e-7


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    data = make_dataset(root / "data", n_docs=200, n_shards=2, vocab=256, seed=4)
    overrides = ["train.max_steps=4", "train.log_interval=1", "checkpoint.interval=0", "model.n_layers=2",
                 f"data.path=[{data}]", "data.document_masking=true", "data.reset_position_ids=true"]
    bigtrain("train", TINY, "--run-dir", str(root / "one"), *overrides)
    return root, overrides, metrics(root / "one")


def test_first_step_is_the_mean_over_documents(masked):
    from bigtrain.config.job import load_job_config
    from bigtrain.data.build import build_loader
    from bigtrain.generate.inference import build_model

    root, overrides, rows = masked
    job = load_job_config(TINY, overrides)
    model = build_model(job.model, seed=job.train.seed)  # the trainer's starting weights (per-layer seeds)
    loader = build_loader(job, 0, 1)
    gas = job.train.global_batch_size // job.train.micro_batch_size
    with torch.no_grad():  # the step's loss: the mean of its micro-batches' token-weighted means
        want = sum(documents_one_by_one(model, loader.next_batch()) for _ in range(gas)) / gas
    assert abs(rows[0]["loss"] - want) <= RTOL * want, (rows[0]["loss"], want)


@pytest.mark.parametrize("name,nproc,extra", [
    ("tp2-pp2", 4, ["parallel.tp=2", "parallel.pp=2", "train.activation_checkpointing=true"]),
    ("dp2", 2, ["parallel.zero_stage=1"]),
])
def test_layouts_match_one_process(masked, name, nproc, extra):
    root, overrides, base = masked
    bigtrain("train", TINY, "--run-dir", str(root / name), *overrides, *extra, nproc=nproc)
    got = metrics(root / name)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for ref, r in zip(base, got):
        assert abs(r["loss"] - ref["loss"]) <= RTOL * ref["loss"], (name, r["step"], r["loss"], ref["loss"])
    print(json.dumps({name: [abs(r["loss"] - b["loss"]) / b["loss"] for r, b in zip(got, base)]}))
