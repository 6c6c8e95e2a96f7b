"""The whole training job: one section per component, plus the rules that span sections."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigtrain.checkpoint.config import CheckpointConfig
from bigtrain.config.base import Config, apply_overrides, load_yaml
from bigtrain.data.config import DataConfig
from bigtrain.errors import BigtrainError
from bigtrain.model.config import ModelConfig
from bigtrain.model.lora import LoraConfig, check_rank
from bigtrain.parallel.config import ParallelConfig
from bigtrain.train.config import TrainConfig


@dataclass
class JobConfig(Config):
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel layout."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and loop."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (lora.rank > 0): only they train, on frozen starting weights (--init)."""
    tokenizer: str | None = None
    """Tokenizer directory (from `bigtrain tokenizer train`); null for token files or synthetic data."""

    def validate(self, prefix: str = "") -> None:
        m, p = self.model, self.parallel
        if m.n_heads % p.tp:
            raise BigtrainError(f"parallel.tp={p.tp} does not divide model.n_heads={m.n_heads}")
        if m.kv_heads % p.tp:
            raise BigtrainError(f"parallel.tp={p.tp} does not divide model.n_kv_heads={m.kv_heads}")
        if m.ffn_size % p.tp:
            raise BigtrainError(f"parallel.tp={p.tp} does not divide model.ffn_hidden={m.ffn_size}")
        if m.vocab_size % p.tp:
            raise BigtrainError(f"parallel.tp={p.tp} does not divide model.vocab_size={m.vocab_size}")
        if self.train.compile and self.train.activation_checkpointing and p.tp > 1:
            # measured: compiled blocks recomputed under checkpointing issue the tensor-parallel all-reduces out
            # of order across ranks (a gloo size mismatch, or a hang), so the combination is refused
            raise BigtrainError("train.compile=true with train.activation_checkpointing=true needs parallel.tp=1 "
                                "(compile or checkpoint, not both, under tensor parallelism)")
        if m.n_layers % p.pp:
            raise BigtrainError(f"parallel.pp={p.pp} does not divide model.n_layers={m.n_layers} "
                                "into equal pipeline stages")
        check_rank(self.lora, m)

    def check_world(self, world_size: int) -> int:
        """Check the layout against the number of processes; return the data-parallel degree."""
        p, t = self.parallel, self.train
        mp = p.tp * p.pp
        if world_size % mp:
            raise BigtrainError(f"world size {world_size} is not a multiple of parallel.tp × parallel.pp = "
                                f"{p.tp} × {p.pp} = {mp}")
        dp = world_size // mp
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise BigtrainError(
                f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size × "
                f"data-parallel size = {t.micro_batch_size} × {dp}")
        return dp


def world_size_from_env() -> int:
    """The number of processes the launcher started (1 when run directly)."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def load_job_config(path: str | Path | None, overrides: list[str] = (), base: dict[str, Any] | None = None
                    ) -> JobConfig:
    """YAML recipe (or an already-resolved dict) + dotted overrides → a validated JobConfig."""
    data = dict(base or {})
    if path is not None:
        data = load_yaml(path)
    apply_overrides(data, list(overrides))
    return JobConfig.from_dict(data)
