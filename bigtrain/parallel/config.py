"""Parallel layout config: tensor, pipeline and ZeRO data parallelism."""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class ParallelConfig(Config):
    tp: int = 1
    """Tensor-parallel degree (megatron-core column/row-parallel layers)."""
    pp: int = 1
    """Pipeline-parallel stages (DeepSpeed PipelineModule when > 1)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3; pipeline parallelism allows only 0 or 1."""
    partition_method: str = "type:Block"
    """How DeepSpeed assigns layers to pipeline stages: type:Block (equal blocks per stage), uniform or parameters."""

    def validate(self, prefix: str = "parallel.") -> None:
        if self.tp < 1:
            raise BigtrainError(f"{prefix}tp={self.tp} must be at least 1")
        if self.pp < 1:
            raise BigtrainError(f"{prefix}pp={self.pp} must be at least 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise BigtrainError(f"{prefix}zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        if self.pp > 1 and self.zero_stage > 1:
            raise BigtrainError(
                f"{prefix}zero_stage={self.zero_stage} is not allowed with {prefix}pp={self.pp}: "
                "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only")
