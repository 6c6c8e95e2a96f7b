"""Document masking in one process: document boundaries from the shards, the batch's fields, and the loss of a
packed micro-batch against its documents run one by one (tests/distributed/test_document_masking.py: layouts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bigtrain.config.job import load_job_config
from bigtrain.data.batch import IGNORE_INDEX, window_batch
from bigtrain.data.build import build_loader
from bigtrain.data.shard_source import ShardWindowSource
from bigtrain.data.shards import read_shard
from bigtrain.errors import BigtrainError
from tests.helpers import documents_one_by_one
from tests.unit.test_data_loader import make_dataset

SEQ = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # documents of 5-200 tokens: most windows of 49 tokens hold one to several boundaries, some none
    return make_dataset(tmp_path_factory.mktemp("docs"), n_docs=120, n_shards=3, vocab=256, seed=3)


def test_doc_starts_are_the_documents_of_the_stream(dataset):
    src = ShardWindowSource(dataset, seq_len=SEQ, seed=5, shuffle_buffer=8)
    order, _ = src._epoch(0)
    lengths = np.concatenate([read_shard(src.paths[i])[1] for i in order])
    bounds = set(np.cumsum(lengths).tolist())  # stream offsets where a document begins (shard edges included)
    seen = 0
    for i in range(src.n_windows):
        _, w = src._position(i)
        lo = w * SEQ
        want = sorted(b - lo for b in bounds if lo < b < lo + SEQ + 1)
        got = src.doc_starts(i).tolist()
        assert got == want, i
        seen += len(got)
    # every boundary of the windows' span shows up exactly once (windows overlap by one token)
    assert seen == sum(0 < b <= src.n_windows * SEQ for b in bounds) > 100


def test_window_batch_fields():
    w = np.arange(20, dtype=np.int64).reshape(2, 10)  # seq_len 9
    b = window_batch(w, [np.array([3, 9]), np.array([], dtype=np.int64)], reset_positions=True)
    assert b.input_ids.tolist() == w[:, :-1].tolist()
    assert b.doc_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1], [0] * 9]
    # targets at window positions 3 and 9 begin a document: predicted from the previous one, no loss
    assert b.labels[0].tolist() == [1, 2, IGNORE_INDEX, 4, 5, 6, 7, 8, IGNORE_INDEX]
    assert b.labels[1].tolist() == list(range(11, 20))
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5], list(range(9))]
    plain = window_batch(w)
    assert plain.doc_ids is None and plain.labels.tolist() == w[:, 1:].tolist()


def _job(dataset, *extra):
    return load_job_config(None, [f"data.path={json.dumps([str(dataset)])}", f"model.seq_len={SEQ}",
                                  "model.vocab_size=256", "train.micro_batch_size=4", "data.document_masking=true",
                                  *extra])


def _model(**overrides):
    from bigtrain.generate.inference import build_model
    from bigtrain.model.config import ModelConfig

    cfg = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=256, seq_len=SEQ,
               init_std=0.1)
    return build_model(ModelConfig(**{**cfg, **overrides}), seed=11)


@pytest.mark.parametrize("reset,window", [(False, None), (True, None), (True, 12)])
def test_packed_loss_is_the_token_weighted_mean_of_its_documents(dataset, reset, window):
    model = _model(sliding_window=window)
    loader = build_loader(_job(dataset, f"data.reset_position_ids={str(reset).lower()}"), 0, 1)
    batch = loader.next_batch()
    assert (batch.position_ids is not None) == reset
    assert int((batch.labels == IGNORE_INDEX).sum()) > 0  # boundaries inside the windows
    with torch.no_grad():
        packed = float(model(batch.input_ids, batch.labels, **batch.model_kwargs()))
        alone = documents_one_by_one(model, batch)
        unmasked = float(model(batch.input_ids, batch.labels))
    # fp32; observed |diff| ~1e-7
    assert abs(packed - alone) <= 1e-5, (packed, alone)
    assert abs(unmasked - alone) > 1e-3  # attention across documents changes the loss: the mask does something


def test_flex_block_mask_matches_spans():
    """The GPU path's mask (FlexAttention, forward only on CPU) against the CPU path, windows included."""
    from bigtrain.model.attention import _flex_plan, _span_plan, document_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 64, 16, generator=g) for n in (4, 2, 2))
    doc = torch.zeros(2, 64, dtype=torch.int32)
    doc[0, 20:], doc[0, 50:], doc[1, 33:] = 1, 2, 7
    for window in (None, 8):
        spans = document_attention(q, k, v, _span_plan(doc), window)
        flex = document_attention(q, k, v, _flex_plan(doc, window), window, compiled=False)
        assert (spans - flex).abs().max() < 1e-5


def test_document_masking_needs_document_boundaries(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1000) % 100)
    with pytest.raises(BigtrainError, match="no document boundaries"):
        build_loader(load_job_config(None, [f"data.path=[{tmp_path / 't.npy'}]", "data.document_masking=true"]), 0, 1)
    with pytest.raises(BigtrainError, match="reset_position_ids=true needs data.document_masking"):
        load_job_config(None, ["data.reset_position_ids=true"])
