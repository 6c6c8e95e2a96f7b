"""What a model family declares: its architectural switches, its table of tensors, its Hugging Face mapping.

Every family is a pre-norm decoder (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention) built by
``bigtrain.model.llama``; a family says which optional parts it has (q/k/v bias, q/k norm, sliding
window, rope scaling) and how its Hugging Face ``config.json`` reads and writes. The tensor table derived
from it is the one statement of names, shapes, tensor-parallel split and pipeline placement: conversion,
resharding, shape checks, HF import/export, parameter counts and ``bigtrain plan`` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bigtrain.errors import BigtrainError

if TYPE_CHECKING:
    from bigtrain.model.config import ModelConfig

TIED_EMBED = "tied_modules.embed.embed_tokens.weight"

Shape = Callable[["ModelConfig"], tuple[int, ...]]


@dataclass(frozen=True)
class BlockTensor:
    """One tensor of a transformer block: its path inside the block (the same under ``model.layers.{i}`` in
    Hugging Face), its full shape, and the dimension tensor parallelism splits (None: replicated)."""

    path: str
    shape: Shape
    tp_dim: int | None


def _q(c): return c.n_heads * c.head_size
def _kv(c): return c.kv_heads * c.head_size


# The block every family shares; column-parallel layers split dim 0, row-parallel dim 1.
DECODER_BLOCK = (
    BlockTensor("input_layernorm.weight", lambda c: (c.d_model,), None),
    BlockTensor("self_attn.q_proj.weight", lambda c: (_q(c), c.d_model), 0),
    BlockTensor("self_attn.k_proj.weight", lambda c: (_kv(c), c.d_model), 0),
    BlockTensor("self_attn.v_proj.weight", lambda c: (_kv(c), c.d_model), 0),
    BlockTensor("self_attn.o_proj.weight", lambda c: (c.d_model, _q(c)), 1),
    BlockTensor("post_attention_layernorm.weight", lambda c: (c.d_model,), None),
    BlockTensor("mlp.gate_proj.weight", lambda c: (c.ffn_size, c.d_model), 0),
    BlockTensor("mlp.up_proj.weight", lambda c: (c.ffn_size, c.d_model), 0),
    BlockTensor("mlp.down_proj.weight", lambda c: (c.d_model, c.ffn_size), 1),
)
QKV_BIAS = (
    BlockTensor("self_attn.q_proj.bias", lambda c: (_q(c),), 0),
    BlockTensor("self_attn.k_proj.bias", lambda c: (_kv(c),), 0),
    BlockTensor("self_attn.v_proj.bias", lambda c: (_kv(c),), 0),
)
QK_NORM = (  # one RMSNorm over each head's features, shared by all heads: replicated
    BlockTensor("self_attn.q_norm.weight", lambda c: (c.head_size,), None),
    BlockTensor("self_attn.k_norm.weight", lambda c: (c.head_size,), None),
)


@dataclass(frozen=True)
class TensorSpec:
    """One row of a model's tensor table."""

    name: str  # bigtrain's canonical name (the plain module's parameter name)
    shape: tuple[int, ...]  # full, unsharded
    tp_dim: int | None  # dimension split over tensor-parallel ranks; None: replicated
    hf_name: str
    layers: tuple[int, ...]  # layer-spec indices holding it (the tied embedding sits at both ends)
    embedding: bool = False  # the input embedding (left out of non-embedding parameter counts)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Family:
    name: str
    hf_model_type: str
    hf_class: str  # transformers' CausalLM class: the export is checked by loading it
    block: tuple[BlockTensor, ...] = DECODER_BLOCK
    rope_types: tuple[str, ...] = ("none",)
    sliding_window: bool = False
    hf_extra_in: Callable[[dict[str, Any], str], dict[str, Any]] | None = None
    """Family-specific config.json reading: checks, and ModelConfig fields to set."""
    hf_extra_out: Callable[["ModelConfig"], dict[str, Any]] | None = None
    """Family-specific config.json fields to write."""

    @property
    def qkv_bias(self) -> bool:
        return any(t.path == "self_attn.q_proj.bias" for t in self.block)

    @property
    def qk_norm(self) -> bool:
        return any(t.path == "self_attn.q_norm.weight" for t in self.block)

    def tensors(self, cfg: "ModelConfig") -> list[TensorSpec]:
        """The table: layer 0 embedding, layers 1..n blocks, n+1 final norm, n+2 output projection."""
        n, v, d = cfg.n_layers, cfg.vocab_size, cfg.d_model
        rows = []
        if cfg.tie_embeddings:
            rows.append(TensorSpec(TIED_EMBED, (v, d), 0, "model.embed_tokens.weight", (0, n + 2), True))
        else:
            rows.append(TensorSpec("0.embed_tokens.weight", (v, d), 0, "model.embed_tokens.weight", (0,), True))
        for i in range(1, n + 1):
            for t in self.block:
                rows.append(TensorSpec(f"{i}.{t.path}", t.shape(cfg), t.tp_dim, f"model.layers.{i - 1}.{t.path}", (i,)))
        rows.append(TensorSpec(f"{n + 1}.norm.weight", (d,), None, "model.norm.weight", (n + 1,)))
        if not cfg.tie_embeddings:
            rows.append(TensorSpec(f"{n + 2}.lm_head.weight", (v, d), 0, "lm_head.weight", (n + 2,)))
        return rows

    # --------------------------------------------------------------------------------- Hugging Face
    def from_hf_config(self, hf: dict[str, Any], where: str) -> "ModelConfig":
        from bigtrain.model.config import ModelConfig

        archs = hf.get("architectures") or [self.hf_class]
        if self.hf_class not in archs:
            raise BigtrainError(f"{where}: architectures {archs} is not supported for model_type "
                                f"{self.hf_model_type!r} (expected ['{self.hf_class}'])")
        if hf.get("hidden_act", "silu") != "silu":
            raise BigtrainError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (expected 'silu')")
        if hf.get("mlp_bias"):
            raise BigtrainError(f"{where}: mlp_bias=true is not supported (family {self.name} has no MLP biases)")
        if hf.get("attention_bias") and not self.qkv_bias:
            raise BigtrainError(f"{where}: attention_bias=true is not supported (family {self.name} has no "
                                "attention biases)")
        theta, scaling = self._rope_from_hf(hf, where)
        try:
            d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            fields = dict(family=self.name, n_layers=int(hf["num_hidden_layers"]), d_model=d, n_heads=heads,
                          n_kv_heads=int(hf.get("num_key_value_heads") or heads),
                          head_dim=int(hf["head_dim"]) if hf.get("head_dim") else None,
                          ffn_hidden=int(hf["intermediate_size"]), vocab_size=int(hf["vocab_size"]),
                          seq_len=int(hf.get("max_position_embeddings", 2048)),
                          max_position_embeddings=hf.get("max_position_embeddings"),
                          tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=theta,
                          rope_scaling=scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                          init_std=float(hf.get("initializer_range", 0.02)))
        except KeyError as e:
            raise BigtrainError(f"{where}: field {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:
            raise BigtrainError(f"{where}: {e}") from None
        if fields["head_dim"] == d // heads:
            fields["head_dim"] = None
        if self.hf_extra_in is not None:
            fields.update(self.hf_extra_in(hf, where))
        try:
            return ModelConfig.from_dict(fields, prefix="model.")
        except BigtrainError as e:
            raise BigtrainError(f"{where}: {e}") from None

    def _rope_from_hf(self, hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any]]:
        # transformers 5 writes rope_parameters (theta inside); older files rope_theta + rope_scaling.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        kind = rope.get("rope_type", rope.get("type")) or "default"
        kind = "none" if kind == "default" else kind
        if kind not in self.rope_types:
            allowed = ", ".join("default" if k == "none" else k for k in self.rope_types)
            raise BigtrainError(f"{where}: rope type {kind!r} is not supported for family {self.name} "
                                f"(supported: {allowed})")
        if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
            raise BigtrainError(f"{where}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported "
                                "(expected 1.0)")
        theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling: dict[str, Any] = {"type": kind}
        if kind != "none":
            try:
                scaling["factor"] = float(rope["factor"])
                if kind == "llama3":
                    for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                        scaling[key] = rope[key]
            except KeyError as e:
                raise BigtrainError(f"{where}: rope {kind} field {e.args[0]!r} is missing") from None
        return theta, scaling

    def to_hf_config(self, cfg: "ModelConfig", bos_id: int | None, eos_id: int | None, pad_id: int | None):
        """transformers' config object for ``cfg`` (its class is found by ``model_type``)."""
        from transformers import AutoConfig

        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        s = cfg.rope_scaling
        if s.type != "none":
            rope.update(rope_type=s.type, factor=s.factor)
            if s.type == "llama3":
                rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                            original_max_position_embeddings=s.original_max_position_embeddings)
        fields = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_size,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
            head_dim=cfg.head_size, hidden_act="silu",
            max_position_embeddings=cfg.max_position_embeddings or cfg.seq_len, rms_norm_eps=cfg.norm_eps,
            rope_parameters=rope, tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0,
            initializer_range=cfg.init_std, bos_token_id=_id(bos_id), eos_token_id=_id(eos_id),
            pad_token_id=_id(pad_id), architectures=[self.hf_class])
        if self.hf_extra_out is not None:
            fields.update(self.hf_extra_out(cfg))
        return AutoConfig.for_model(self.hf_model_type, **fields)


def _id(i: int | None) -> int | None:
    return None if i is None or i < 0 else int(i)
