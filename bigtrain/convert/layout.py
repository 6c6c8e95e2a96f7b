"""Checkpoint names and tensor-parallel splits, read from the model family's tensor table.

The canonical (consolidated) names are those of the plain module (pipeline size 1): ``0.embed_tokens.weight``,
``{i}.self_attn.q_proj.weight`` for blocks ``i = 1..n``, ``{n+1}.norm.weight``, ``{n+2}.lm_head.weight``,
and with tied embeddings ``tied_modules.embed.embed_tokens.weight`` (no lm_head). A DeepSpeed
``PipelineModule`` uses the same names, so the rules here hold for every layout. A name the family's
table does not list is an error, never a replicated tensor.
"""

from __future__ import annotations

import torch

from bigtrain.errors import BigtrainError
from bigtrain.model.config import ModelConfig
from bigtrain.model.families import TIED_EMBED, TensorSpec, tensor_table

__all__ = ["TIED_EMBED", "spec", "tp_split_dim", "shard", "merge", "shard_row", "merge_row", "expected_shapes",
           "layer_file_name", "to_hf_names"]


def spec(name: str, cfg: ModelConfig) -> TensorSpec:
    row = tensor_table(cfg).get(name)
    if row is None:
        raise BigtrainError(f"tensor {name} is not in the {cfg.family} family's table "
                            f"(model.n_layers={cfg.n_layers}, tie_embeddings={cfg.tie_embeddings})")
    return row


def tp_split_dim(name: str, cfg: ModelConfig) -> int | None:
    """The dimension tensor parallelism splits, None for replicated tensors (norms)."""
    return spec(name, cfg).tp_dim


def shard(full: torch.Tensor, name: str, tp: int, rank: int, cfg: ModelConfig) -> torch.Tensor:
    return shard_row(full, spec(name, cfg), tp, rank)


def merge(shards: list[torch.Tensor], name: str, cfg: ModelConfig) -> torch.Tensor:
    return merge_row(shards, spec(name, cfg))


def shard_row(full: torch.Tensor, row: TensorSpec, tp: int, rank: int) -> torch.Tensor:
    """Tensor-parallel rank ``rank``'s slice of ``full`` by its table row (any table: model or adapters)."""
    if row.tp_dim is None or tp == 1:
        return full
    return full.chunk(tp, dim=row.tp_dim)[rank].contiguous()


def merge_row(shards: list[torch.Tensor], row: TensorSpec) -> torch.Tensor:
    if row.tp_dim is None or len(shards) == 1:
        return shards[0]
    return torch.cat(shards, dim=row.tp_dim)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name → full (unsharded) shape."""
    return {name: row.shape for name, row in tensor_table(cfg).items()}


def layer_file_name(layer_idx: int, key: str, cfg: ModelConfig) -> str | None:
    """Canonical name of ``key`` in DeepSpeed's ``layer_XX-model_YY-model_states.pt`` for layer XX;
    None for entries to skip (extra state, the tied embedding's second copy)."""
    if key.endswith("_extra_state"):
        return None
    if cfg.tie_embeddings and key == "embed_tokens.weight":
        return TIED_EMBED if layer_idx == 0 else None
    return f"{layer_idx}.{key}"


def to_hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Canonical name → Hugging Face name."""
    return {name: row.hf_name for name, row in tensor_table(cfg).items()}
