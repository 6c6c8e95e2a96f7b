"""Parameter names of bigtrain's model and how each one is split over tensor-parallel ranks.

The canonical (consolidated) names are those of the plain module (pipeline size 1): ``0.embed_tokens.weight``,
``{i}.self_attn.q_proj.weight`` for blocks ``i = 1..n``, ``{n+1}.norm.weight``, ``{n+2}.lm_head.weight``,
and with tied embeddings ``tied_modules.embed.embed_tokens.weight`` (no lm_head). A DeepSpeed
``PipelineModule`` uses the same names, so the rules here hold for every layout.
"""

from __future__ import annotations

import torch

from bigtrain.model.config import ModelConfig

TIED_EMBED = "tied_modules.embed.embed_tokens.weight"

# Column-parallel (and the vocabulary-parallel embedding): split on the output dimension.
_DIM0 = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight",
         "lm_head.weight", "embed_tokens.weight")
# Row-parallel: split on the input dimension.
_DIM1 = ("o_proj.weight", "down_proj.weight")


def tp_split_dim(name: str) -> int | None:
    """0 or 1 for tensor-parallel weights, None for replicated ones (norms)."""
    if name.endswith(_DIM0):
        return 0
    if name.endswith(_DIM1):
        return 1
    return None


def shard(full: torch.Tensor, name: str, tp: int, rank: int) -> torch.Tensor:
    dim = tp_split_dim(name)
    if dim is None or tp == 1:
        return full
    return full.chunk(tp, dim=dim)[rank].contiguous()


def merge(shards: list[torch.Tensor], name: str) -> torch.Tensor:
    dim = tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    return torch.cat(shards, dim=dim)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name → full (unsharded) shape."""
    d, hd, f, v = cfg.d_model, cfg.head_dim, cfg.ffn_size, cfg.vocab_size
    n = cfg.n_layers
    out: dict[str, tuple[int, ...]] = {}
    out[TIED_EMBED if cfg.tie_embeddings else "0.embed_tokens.weight"] = (v, d)
    for i in range(1, n + 1):
        out[f"{i}.input_layernorm.weight"] = (d,)
        out[f"{i}.self_attn.q_proj.weight"] = (cfg.n_heads * hd, d)
        out[f"{i}.self_attn.k_proj.weight"] = (cfg.kv_heads * hd, d)
        out[f"{i}.self_attn.v_proj.weight"] = (cfg.kv_heads * hd, d)
        out[f"{i}.self_attn.o_proj.weight"] = (d, cfg.n_heads * hd)
        out[f"{i}.post_attention_layernorm.weight"] = (d,)
        out[f"{i}.mlp.gate_proj.weight"] = (f, d)
        out[f"{i}.mlp.up_proj.weight"] = (f, d)
        out[f"{i}.mlp.down_proj.weight"] = (d, f)
    out[f"{n + 1}.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        out[f"{n + 2}.lm_head.weight"] = (v, d)
    return out


def layer_file_name(layer_idx: int, key: str, cfg: ModelConfig) -> str | None:
    """Canonical name of ``key`` in DeepSpeed's ``layer_XX-model_YY-model_states.pt`` for layer XX;
    None for entries to skip (extra state, the tied embedding's second copy)."""
    if key.endswith("_extra_state"):
        return None
    if cfg.tie_embeddings and key == "embed_tokens.weight":
        return TIED_EMBED if layer_idx == 0 else None
    return f"{layer_idx}.{key}"


# Hugging Face LlamaForCausalLM names ↔ canonical names.
_HF_BLOCK = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.q_proj.weight": "self_attn.q_proj.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def to_hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Canonical name → Hugging Face name."""
    n = cfg.n_layers
    m = {(TIED_EMBED if cfg.tie_embeddings else "0.embed_tokens.weight"): "model.embed_tokens.weight"}
    for i in range(1, n + 1):
        for ours, theirs in _HF_BLOCK.items():
            m[f"{i}.{ours}"] = f"model.layers.{i - 1}.{theirs}"
    m[f"{n + 1}.norm.weight"] = "model.norm.weight"
    if not cfg.tie_embeddings:
        m[f"{n + 2}.lm_head.weight"] = "lm_head.weight"
    return m
