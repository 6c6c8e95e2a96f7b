"""Model architecture config (Llama-style decoder)."""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class ModelConfig(Config):
    n_layers: int = 2
    """Number of transformer blocks."""
    d_model: int = 64
    """Hidden size."""
    n_heads: int = 4
    """Attention (query) heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; null means n_heads (plain multi-head)."""
    ffn_hidden: int | None = None
    """SwiGLU inner size; null means 8/3·d_model rounded up to a multiple of 64."""
    vocab_size: int = 256
    """Vocabulary size; must match the tokenizer and be divisible by parallel.tp."""
    seq_len: int = 64
    """Training context length in tokens."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialisation; output projections are scaled by 1/sqrt(2·n_layers)."""

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return -(-int(8 * self.d_model / 3) // 64) * 64

    def validate(self, prefix: str = "model.") -> None:
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise BigtrainError(f"{prefix}{name}={getattr(self, name)} must be positive")
        if self.n_kv_heads is not None and self.n_kv_heads <= 0:
            raise BigtrainError(f"{prefix}n_kv_heads={self.n_kv_heads} must be positive")
        if self.ffn_hidden is not None and self.ffn_hidden <= 0:
            raise BigtrainError(f"{prefix}ffn_hidden={self.ffn_hidden} must be positive")
        if self.d_model % self.n_heads:
            raise BigtrainError(f"{prefix}n_heads={self.n_heads} does not divide {prefix}d_model={self.d_model}")
        if self.head_dim % 2:
            raise BigtrainError(f"{prefix}d_model/{prefix}n_heads={self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise BigtrainError(f"{prefix}n_kv_heads={self.kv_heads} does not divide {prefix}n_heads={self.n_heads}")
        if self.init_std <= 0 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise BigtrainError(f"{prefix}init_std, {prefix}norm_eps and {prefix}rope_theta must be positive")

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count of the unsharded model."""
        d, f, hd = self.d_model, self.ffn_size, self.head_dim
        attn = d * self.n_heads * hd + 2 * d * self.kv_heads * hd + self.n_heads * hd * d
        block = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        total = self.n_layers * block + d + head
        return total + (emb if include_embedding else 0)
