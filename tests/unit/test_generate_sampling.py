"""KV-cache decoding equals full recomputation; top-k / top-p filtering; greedy is deterministic."""

from __future__ import annotations

import torch

from bigtrain.generate.sampling import filter_logits, generate
from bigtrain.model.config import ModelConfig
from bigtrain.model.llama import KVCache


def tiny_model(tied=False):
    from bigtrain.generate.inference import build_model

    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=128, seq_len=64,
                      tie_embeddings=tied, init_std=0.2)
    return build_model(cfg, seed=7)


def test_kv_cache_matches_full_forward():
    model = tiny_model()
    x = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        cache = KVCache()
        outs = []
        for a, b in ((0, 10), (10, 13), *((i, i + 1) for i in range(13, 24))):  # prefill, a chunk, then 1 by 1
            outs.append(model(x[:, a:b], kv_cache=cache))
            cache.advance(b - a)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_greedy_with_and_without_cache_agree():
    model = tiny_model(tied=True)
    prompt = [1, 5, 9, 33]
    a = generate(model, prompt, max_new_tokens=20)
    b = generate(model, prompt, max_new_tokens=20, use_cache=False)
    assert a == b and len(a) == 20


def test_sampling_is_seeded_and_respects_vocab_limit():
    model = tiny_model()
    a = generate(model, [1, 2], 15, temperature=1.0, top_k=20, seed=3, vocab_limit=100)
    b = generate(model, [1, 2], 15, temperature=1.0, top_k=20, seed=3, vocab_limit=100)
    assert a == b and all(i < 100 for i in a)


def test_filter_logits():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [True, False, True, False]
    probs = torch.softmax(logits, -1)  # ≈ [.03, .64, .09, .24]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [False, True, False, True]
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).sum() == 1
    assert probs.argmax() == 1
