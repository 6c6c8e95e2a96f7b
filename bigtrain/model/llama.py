"""The decoder every family shares, as an ordered list of layer specs (the family picks its optional parts).

The model is ``[Embedding, Block × n_layers, FinalNorm, LMHead]``. The same list runs as a plain
module (pipeline size 1) or is cut into DeepSpeed pipeline stages (see ``bigtrain.parallel.pipeline``);
nothing here knows which. Tensor parallelism comes from megatron-core's layers, which shard themselves
over the tensor-parallel group that ``bigtrain.parallel`` set up: weights are created whole on the CPU
from a generator seeded per layer and then split, so every layout starts from the same weights.

Parameter names follow Hugging Face's Llama (q_proj, gate_proj, …) to keep conversion a renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from torch import nn

from bigtrain.model.attention import document_attention, document_plan
from bigtrain.model.config import ModelConfig

TIED_EMBEDDING_KEY = "embed"


@dataclass
class LayerSpec:
    """A layer to build: ``cls(**kwargs)``. ``tie_key`` marks layers that share one module's weights;
    such a layer runs ``forward_fn(module, x)`` on the shared module instead of ``module(x)``."""

    cls: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    tie_key: str | None = None
    forward_fn: Callable | None = None

    def build(self) -> nn.Module:
        return self.cls(**self.kwargs)


def _normal_init(std: float, generator: torch.Generator) -> Callable[[torch.Tensor], None]:
    return partial(torch.nn.init.normal_, mean=0.0, std=std, generator=generator)


def _layer_generator(seed: int, layer_index: int) -> torch.Generator:
    # One generator per layer: the weights of layer i never depend on which other layers this
    # process builds, which is what makes pipeline stages start from the single-process weights.
    return torch.Generator().manual_seed(seed * 1_000_003 + layer_index)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies, with the config's scaling (as Hugging Face computes them)."""
    hd = cfg.head_size
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    s = cfg.rope_scaling
    if s.type == "linear":
        return inv_freq / s.factor
    if s.type == "llama3":
        # Llama 3.1: long wavelengths are stretched by `factor`, short ones kept, the band between blended.
        old = s.original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / s.low_freq_factor, inv_freq / s.factor, inv_freq)
        smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        blended = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= old / s.high_freq_factor) & (wavelen <= old / s.low_freq_factor)
        return torch.where(medium, blended, scaled)
    return inv_freq


def rotary_cos_sin(seq_len: int, inv_freq: torch.Tensor, device, dtype, offset: int = 0,
                   position_ids: torch.Tensor | None = None):
    """cos, sin: ``[seq, head_dim]`` for positions offset … offset + seq - 1, or ``[batch, 1, seq, head_dim]``
    for explicit ``position_ids`` ``[batch, seq]``."""
    if position_ids is None:
        t = torch.arange(offset, offset + seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
    else:
        freqs = position_ids[:, None, :, None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; the rotate-half convention of Hugging Face's Llama."""
    return x * cos + _rotate_half(x) * sin


class Embedding(nn.Module):
    """Token embedding, sharded over the vocabulary; also the output projection when tied."""

    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, seed: int, layer_index: int = 0):
        super().__init__()
        gen = _layer_generator(seed, layer_index)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.d_model,
                                                   init_method=_normal_init(cfg.init_std, gen), config=mp)

    @property
    def weight(self) -> torch.Tensor:
        return self.embed_tokens.weight

    def forward(self, tokens):
        ids, extra = split_activation(tokens)
        return join_activation(self.embed_tokens(ids), extra)


# --- packed documents ------------------------------------------------------------------------------
# Between layers (and between pipeline stages, where DeepSpeed sends tuples of tensors) an activation is the
# hidden state [batch, seq, d_model] alone, or, for packed documents, the tuple (hidden, doc_ids) or
# (hidden, doc_ids, position_ids): doc_ids [batch, seq] confine attention to each document
# (bigtrain.model.attention); position_ids [batch, seq] are the rotary positions (restarting per document).
# The embedding takes the same forms with token ids in place of the hidden state.

def split_activation(x) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(hidden or token ids, the document tensors that ride along: () or (doc_ids[, position_ids]))."""
    if isinstance(x, tuple):
        return x[0], tuple(x[1:])
    return x, ()


def join_activation(hidden: torch.Tensor, extra: tuple[torch.Tensor, ...]):
    return (hidden, *extra) if extra else hidden


def tied_logits(embedding: Embedding, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary-parallel logits through the embedding matrix (the tied output projection)."""
    x = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    return F.linear(x, embedding.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, gen: torch.Generator):
        super().__init__()
        tp = mp.tensor_model_parallel_size
        arch = cfg.arch
        self.head_dim = cfg.head_size
        self.n_heads = cfg.n_heads // tp
        self.n_kv_heads = cfg.kv_heads // tp
        self.inv_freq = rope_inv_freq(cfg)  # a plain tensor, not a buffer: no checkpoint entry
        self.sliding_window = cfg.sliding_window
        init = _normal_init(cfg.init_std, gen)
        out_init = _normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers), gen)
        col = partial(ColumnParallelLinear, config=mp, init_method=init, bias=arch.qkv_bias, gather_output=False)
        self.q_proj = col(cfg.d_model, cfg.n_heads * self.head_dim)
        self.k_proj = col(cfg.d_model, cfg.kv_heads * self.head_dim)
        self.v_proj = col(cfg.d_model, cfg.kv_heads * self.head_dim)
        self.o_proj = RowParallelLinear(cfg.n_heads * self.head_dim, cfg.d_model, config=mp, init_method=out_init,
                                        bias=False, input_is_parallel=True, skip_bias_add=True)
        if arch.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, kv_cache: "KVCache | None" = None, doc_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x)[0].view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x)[0].view(b, s, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x)[0].view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        offset = kv_cache.length if kv_cache is not None else 0
        if self.inv_freq.device != x.device:  # moved once, not copied to the GPU in every step
            self.inv_freq = self.inv_freq.to(x.device)
        cos, sin = rotary_cos_sin(s, self.inv_freq, x.device, q.dtype, offset, position_ids)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if doc_ids is not None:
            if kv_cache is not None:
                raise ValueError("packed documents (doc_ids) cannot be decoded with a KV cache")
            out = document_attention(q, k, v, document_plan(doc_ids, self.sliding_window), self.sliding_window)
        else:
            if kv_cache is not None:
                k, v = kv_cache.update(self, k, v)
            window = self.sliding_window if self.sliding_window and offset + s > self.sliding_window else None
            # With a cache and several new tokens the causal mask must be offset by the cached length.
            if window is not None or (offset > 0 and s > 1):
                mask = causal_mask(s, offset, window, x.device)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=offset == 0, enable_gqa=True)
        out = out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
        return self.o_proj(out)[0]


def causal_mask(s: int, offset: int, window: int | None, device) -> torch.Tensor:
    """[s, offset + s] bool: query i (at position offset + i) sees key j iff j <= offset + i and, with a
    sliding window, offset + i - j < window (Hugging Face's Mistral convention)."""
    q = torch.arange(offset, offset + s, device=device)[:, None]
    k = torch.arange(offset + s, device=device)[None, :]
    mask = k <= q
    if window is not None:
        mask &= q - k < window
    return mask


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, gen: torch.Generator):
        super().__init__()
        init = _normal_init(cfg.init_std, gen)
        out_init = _normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers), gen)
        col = partial(ColumnParallelLinear, config=mp, init_method=init, bias=False, gather_output=False)
        self.gate_proj = col(cfg.d_model, cfg.ffn_size)
        self.up_proj = col(cfg.d_model, cfg.ffn_size)
        self.down_proj = RowParallelLinear(cfg.ffn_size, cfg.d_model, config=mp, init_method=out_init,
                                           bias=False, input_is_parallel=True, skip_bias_add=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, seed: int, layer_index: int):
        super().__init__()
        gen = _layer_generator(seed, layer_index)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, mp, gen)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg, mp, gen)

    def forward(self, x, kv_cache: "KVCache | None" = None):
        x, extra = split_activation(x)
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, *extra)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return join_activation(x, extra)


class FinalNorm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x) -> torch.Tensor:
        return self.norm(split_activation(x)[0])


class LMHead(nn.Module):
    """Output projection to vocabulary-parallel logits (each tensor-parallel rank holds a slice)."""

    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, seed: int, layer_index: int):
        super().__init__()
        gen = _layer_generator(seed, layer_index)
        self.lm_head = ColumnParallelLinear(cfg.d_model, cfg.vocab_size, config=mp,
                                            init_method=_normal_init(cfg.init_std, gen), bias=False,
                                            gather_output=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[0]


def layer_specs(cfg: ModelConfig, mp: ModelParallelConfig, seed: int) -> list[LayerSpec]:
    """The model as an ordered list; layer ``i`` is seeded by ``(seed, i)``."""
    specs = [LayerSpec(Embedding, dict(cfg=cfg, mp=mp, seed=seed, layer_index=0),
                       tie_key=TIED_EMBEDDING_KEY if cfg.tie_embeddings else None)]
    for i in range(cfg.n_layers):
        specs.append(LayerSpec(Block, dict(cfg=cfg, mp=mp, seed=seed, layer_index=1 + i)))
    specs.append(LayerSpec(FinalNorm, dict(cfg=cfg)))
    if cfg.tie_embeddings:
        specs.append(LayerSpec(Embedding, dict(cfg=cfg, mp=mp, seed=seed, layer_index=0),
                               tie_key=TIED_EMBEDDING_KEY, forward_fn=tied_logits))
    else:
        specs.append(LayerSpec(LMHead, dict(cfg=cfg, mp=mp, seed=seed, layer_index=cfg.n_layers + 1)))
    return specs


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over vocabulary-parallel logits (labels < 0 are ignored)."""
    mask = labels >= 0
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.clamp(min=0))
    return (losses * mask).sum() / mask.sum().clamp(min=1)


class KVCache:
    """Keys and values of earlier positions, per attention module, for incremental decoding."""

    def __init__(self):
        self.length = 0
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor):
        key = id(module)
        if key in self._kv:
            pk, pv = self._kv[key]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self._kv[key] = (k, v)
        return k, v

    def advance(self, n: int) -> None:
        self.length += n
