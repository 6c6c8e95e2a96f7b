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
    """DeepSpeed ZeRO stage 0-3; pipeline parallelism allows only 0 or 1. At data-parallel size 1 it runs
    as 0 (fp32) or at most 1 (bf16): see zero_stage_at."""
    bucket_elements: int = 0
    """Elements per ZeRO communication bucket (gradient reduce, parameter all-gather, ZeRO-3 prefetch);
    each costs that many elements of memory per rank. 0: DeepSpeed's defaults (5e8 reduce/all-gather)."""
    zero3_persistence_elements: int = 100_000
    """ZeRO-3: parameter tensors of at most this many elements stay whole on every rank rather than partitioned
    (DeepSpeed's stage3_param_persistence_threshold, default 1e5: the norms at scale); 0 partitions every tensor."""
    partition_method: str = "type:Block"
    """How DeepSpeed assigns layers to pipeline stages: type:Block (equal blocks per stage), uniform or parameters."""

    def validate(self, prefix: str = "parallel.") -> None:
        if self.tp < 1:
            raise BigtrainError(f"{prefix}tp={self.tp} must be at least 1")
        if self.pp < 1:
            raise BigtrainError(f"{prefix}pp={self.pp} must be at least 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise BigtrainError(f"{prefix}zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        if self.zero3_persistence_elements < 0:
            raise BigtrainError(f"{prefix}zero3_persistence_elements={self.zero3_persistence_elements} must be >= 0")
        if self.bucket_elements < 0:
            raise BigtrainError(f"{prefix}bucket_elements={self.bucket_elements} must be 0 (DeepSpeed's default) "
                                "or a positive number of elements")
        if self.pp > 1 and self.zero_stage > 1:
            raise BigtrainError(
                f"{prefix}zero_stage={self.zero_stage} is not allowed with {prefix}pp={self.pp}: "
                "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only")

    def zero_stage_at(self, dp: int, precision: str) -> int:
        """The ZeRO stage DeepSpeed runs at data-parallel size ``dp``. With one replica there is nothing to
        partition. In fp32 every stage would only add a flat fp32 copy of the weights and copy through it
        each step (1.2x the step time of stage 0 on CPU, tools/bench_step.py), so it runs stage 0. In bf16
        that copy is the fp32 master the update needs, so stage 1 keeps it, without stage 2/3's hooks.
        Checkpoints record the stage that ran (``layout.zero_stage``); resuming at a larger DP converts."""
        if dp > 1:
            return self.zero_stage
        return 0 if precision == "fp32" else min(self.zero_stage, 1)
