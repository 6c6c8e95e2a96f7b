"""Model architecture config (decoder-only; the family names the variant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class RopeScaling(Config):
    type: Literal["none", "linear", "llama3"] = "none"
    """Rotary frequency scaling: none, linear (positions divided by factor) or llama3 (Llama 3.1+)."""
    factor: float = 1.0
    """Scaling factor (linear and llama3)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above original_max_position_embeddings / low_freq_factor are divided by factor."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below original_max_position_embeddings / high_freq_factor are kept."""
    original_max_position_embeddings: int = 8192
    """llama3: the context length the model was pretrained with before scaling."""

    def validate(self, prefix: str = "") -> None:
        if self.factor <= 0:
            raise BigtrainError(f"{prefix}factor={self.factor} must be positive")
        if self.type == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise BigtrainError(f"{prefix}low_freq_factor={self.low_freq_factor} must be positive and below "
                                    f"{prefix}high_freq_factor={self.high_freq_factor}")
            if self.original_max_position_embeddings <= 0:
                raise BigtrainError(f"{prefix}original_max_position_embeddings must be positive")


@dataclass
class ModelConfig(Config):
    family: str = "llama"
    """Model family (bigtrain.model.families): llama, mistral, qwen2, qwen3."""
    n_layers: int = 2
    """Number of transformer blocks."""
    d_model: int = 64
    """Hidden size."""
    n_heads: int = 4
    """Attention (query) heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; null means n_heads (plain multi-head)."""
    head_dim: int | None = None
    """Size of one attention head; null means d_model / n_heads."""
    ffn_hidden: int | None = None
    """SwiGLU inner size; null means 8/3·d_model rounded up to a multiple of 64."""
    vocab_size: int = 256
    """Vocabulary size; must match the tokenizer and be divisible by parallel.tp."""
    seq_len: int = 64
    """Training context length in tokens."""
    max_position_embeddings: int | None = None
    """Context the model is meant for, written to a Hugging Face export; null means seq_len."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies."""
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """Rotary frequency scaling (Llama 3.1+ checkpoints use type llama3)."""
    sliding_window: int | None = None
    """Attention sees at most this many most recent tokens (Mistral); null means the whole sequence."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialisation; output projections are scaled by 1/sqrt(2·n_layers)."""

    @property
    def arch(self):
        """The family's declaration (tensor table, HF mapping, architectural switches)."""
        from bigtrain.model.families import get_family

        return get_family(self.family)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return -(-int(8 * self.d_model / 3) // 64) * 64

    def validate(self, prefix: str = "model.") -> None:
        from bigtrain.model.families import FAMILIES

        if self.family not in FAMILIES:
            raise BigtrainError(f"{prefix}family={self.family!r} is not one of {', '.join(FAMILIES)}")
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise BigtrainError(f"{prefix}{name}={getattr(self, name)} must be positive")
        for name in ("n_kv_heads", "ffn_hidden", "head_dim", "sliding_window", "max_position_embeddings"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise BigtrainError(f"{prefix}{name}={getattr(self, name)} must be positive")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise BigtrainError(f"{prefix}n_heads={self.n_heads} does not divide {prefix}d_model={self.d_model} "
                                f"(or set {prefix}head_dim)")
        if self.head_size % 2:
            raise BigtrainError(f"{prefix}head_dim={self.head_size} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise BigtrainError(f"{prefix}n_kv_heads={self.kv_heads} does not divide {prefix}n_heads={self.n_heads}")
        if self.init_std <= 0 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise BigtrainError(f"{prefix}init_std, {prefix}norm_eps and {prefix}rope_theta must be positive")
        if self.sliding_window is not None and not self.arch.sliding_window:
            raise BigtrainError(f"{prefix}sliding_window: family {self.family} has no sliding-window attention "
                                f"(families that have it: {', '.join(n for n, f in FAMILIES.items() if f.sliding_window)})")

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count of the unsharded model (from the family's tensor table)."""
        from bigtrain.model.families import tensor_table

        return sum(t.numel for t in tensor_table(self).values() if include_embedding or not t.embedding)
