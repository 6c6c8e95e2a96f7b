"""Each family's table and forward against transformers' own class, in-process (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.1)
CASES = {
    "llama-linear": ("LlamaForCausalLM", "LlamaConfig", dict(rope_parameters={"rope_type": "linear",
                                                                               "rope_theta": 10000.0, "factor": 4.0})),
    "llama-llama3": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True, head_dim=8, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=10)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=32)),
}


def hf_model(case: str):
    import transformers as T

    model_cls, conf_cls, extra = CASES[case]
    torch.manual_seed(0)
    model = getattr(T, model_cls)(getattr(T, conf_cls)(**COMMON, **extra)).eval()
    with torch.no_grad():  # random biases and norm weights, so a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def imported(model):
    from bigtrain.convert.hf import hf_to_canonical, model_config_from_hf

    cfg = model_config_from_hf(json.loads(model.config.to_json_string()), "test")
    return cfg, hf_to_canonical(dict(model.state_dict()), cfg, "test")


@pytest.mark.parametrize("case", list(CASES))
def test_forward_table_and_config_match_transformers(case):
    from bigtrain.convert.hf import model_config_from_hf
    from bigtrain.generate.inference import build_model

    model = hf_model(case)
    cfg, weights = imported(model)
    assert cfg.family == case.split("-")[0]
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, 128, (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (build_model(cfg, weights)(tokens) - model(tokens).logits).abs().max().item()
    assert diff <= 1e-4
    back = cfg.arch.to_hf_config(cfg, None, None, None)
    assert type(back).__name__ == CASES[case][1]
    assert model_config_from_hf(json.loads(back.to_json_string()), "test") == cfg


def test_sliding_window_generation_with_cache_equals_full_forward():
    from bigtrain.generate.inference import build_model
    from bigtrain.generate.sampling import generate

    cfg, weights = imported(hf_model("mistral"))
    model = build_model(cfg, weights)
    prompt = torch.randint(0, 128, (7,), generator=torch.Generator().manual_seed(2)).tolist()
    cached = generate(model, prompt, max_new_tokens=20, use_cache=True)
    assert cached == generate(model, prompt, max_new_tokens=20, use_cache=False)  # 27 tokens, window 10


def test_plan_counts_every_table_row_on_its_stages():
    from bigtrain.config.job import JobConfig
    from bigtrain.plan.estimate import stage_tensors

    def job(family: str, tp: int = 1):
        return JobConfig.from_dict({"model": {"family": family, "n_layers": 4, "n_kv_heads": 2, "tie_embeddings": True},
                                    "parallel": {"tp": tp, "pp": 2}})

    m = job("qwen2").model
    stages = [sum(stage_tensors(job("qwen2"), r)) for r in range(2)]
    assert sum(stages) == m.num_params() + m.vocab_size * m.d_model  # the tied embedding sits on both ends
    biases = 2 * (m.n_heads + 2 * m.kv_heads) * m.head_size  # two blocks a stage
    for tp in (1, 2):
        for r in range(2):
            assert sum(stage_tensors(job("qwen2", tp), r)) - sum(stage_tensors(job("llama", tp), r)) == biases // tp


def test_family_switches_refused_where_they_do_not_exist():
    from bigtrain.errors import BigtrainError
    from bigtrain.model.config import ModelConfig

    with pytest.raises(BigtrainError, match="model.family='gpt2' is not one of llama, mistral, qwen2, qwen3"):
        ModelConfig.from_dict({"family": "gpt2"}, prefix="model.")
    with pytest.raises(BigtrainError, match="family llama has no sliding-window attention"):
        ModelConfig.from_dict({"sliding_window": 8}, prefix="model.")
