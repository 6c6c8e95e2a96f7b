"""bigtrain's model for inference in one process: full weights from a checkpoint of any layout.

``load_model_for_inference(ckpt)`` → (SequentialModel in eval mode, tokenizer or None, JobConfig). Other
stages (eval, lm-eval adapter, export checks) use it; it needs no launcher: it starts a world of one (gloo)
when torch.distributed is not initialised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bigtrain import quiet
from bigtrain.errors import BigtrainError
from bigtrain.model.config import ModelConfig


def ensure_single_process_parallel() -> None:
    """torch.distributed + megatron-core parallel_state for TP = PP = 1 in this process."""
    quiet.install()
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    if parallel_state.model_parallel_is_initialized():
        if parallel_state.get_tensor_model_parallel_world_size() != 1:
            raise BigtrainError("inference model needs tensor-parallel size 1 in this process")
        return
    if dist.get_world_size() != 1:
        raise BigtrainError("load_model_for_inference runs in a single process (world size 1)")
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)


def build_model(cfg: ModelConfig, weights: dict[str, torch.Tensor] | None = None, seed: int = 0):
    """A plain (TP = PP = 1) SequentialModel of ``cfg``; ``weights`` (canonical names) are loaded strictly."""
    ensure_single_process_parallel()
    from bigtrain.model.llama import layer_specs, lm_loss
    from bigtrain.parallel.config import ParallelConfig
    from bigtrain.parallel.pipeline import SequentialModel
    from bigtrain.parallel.topology import model_parallel_config

    model = SequentialModel(layer_specs(cfg, model_parallel_config(ParallelConfig()), seed), lm_loss)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def build_lora_model(cfg: ModelConfig, base: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], lora):
    """A plain model of ``cfg`` with the base weights and LoRA adapters (unmerged, as training ran them)."""
    from bigtrain.model.lora import apply_lora

    model = build_model(cfg, base)
    apply_lora(model, cfg, lora, seed=0, tp=1, tp_rank=0)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in adapters.items():
            params[name].copy_(t)
    return model.eval()


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    own = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    missing = sorted(own - set(weights))
    extra = sorted(set(weights) - own)
    if missing or extra:
        raise BigtrainError(f"weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    res = model.load_state_dict(weights, strict=False)
    assert not [k for k in res.missing_keys if not k.endswith("_extra_state")]


def load_tokenizer_from_checkpoint(ckpt: Path, meta: dict[str, Any]):
    from bigtrain.tokenizer import load_tokenizer

    sub = meta.get("tokenizer")
    if sub and (ckpt / sub).is_dir():
        return load_tokenizer(ckpt)
    return None


def load_model_for_inference(ckpt: str | os.PathLike):
    """(model, tokenizer or None, JobConfig) from a run dir or checkpoint dir of any layout (or consolidated; a LoRA
    checkpoint: its adapters merged into its base)."""
    from bigtrain.convert.checkpoint_io import job_from_meta, model_config
    from bigtrain.convert.weights_io import read_merged_weights

    weights, meta, path = read_merged_weights(ckpt)
    cfg = model_config(meta, path)
    job = job_from_meta(meta, path, tp=1, pp=1, zero_stage=0)
    model = build_model(cfg, weights)
    tok = load_tokenizer_from_checkpoint(path, meta)
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise BigtrainError(f"{path}: tokenizer has {tok.vocab_size} tokens but model.vocab_size={cfg.vocab_size}")
    return model, tok, job
