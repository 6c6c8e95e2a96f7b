"""Optimisation and loop config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class TrainConfig(Config):
    max_steps: int = 100
    """Optimizer steps to run (the run ends at this step, resumed or not)."""
    stop_after: int = 0
    """End this invocation after this step and save (0: run to max_steps); the LR schedule still
    follows max_steps, so a later resume continues the same run (time-sliced jobs)."""
    seed: int = 1234
    """Seed for weight initialisation and data order."""
    micro_batch_size: int = 4
    """Sequences per data-parallel rank per forward/backward."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (accumulation fills the gap)."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor as a fraction of lr."""
    warmup_steps: int = 10
    """Linear warmup steps before cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32 (default, and the one that is bitwise reproducible on CPU) or bf16."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass to save memory."""
    compile: bool = False
    """torch.compile each transformer block (the first steps pay the compilation; see tools/bench_step.py
    for what it gains on your machine)."""
    max_nonfinite_steps: int = 5
    """Stop (with a checkpoint of the last good weights) after this many consecutive steps whose loss or
    gradient norm is not finite; each such step is skipped, not applied."""
    spike_factor: float = 3.0
    """Warn, naming the batch's sample ids, when a step's loss exceeds this multiple of the running mean
    (0 disables)."""
    log_interval: int = 1
    """Write a metrics record every this many steps."""
    eval_interval: int = 0
    """Held-out evaluation every this many steps (0: never)."""
    eval_batches: int = 4
    """Micro-batches per held-out evaluation."""

    def validate(self, prefix: str = "train.") -> None:
        for name in ("max_steps", "micro_batch_size", "global_batch_size", "log_interval", "eval_batches",
                     "max_nonfinite_steps"):
            if getattr(self, name) <= 0:
                raise BigtrainError(f"{prefix}{name}={getattr(self, name)} must be positive")
        if self.lr <= 0:
            raise BigtrainError(f"{prefix}lr={self.lr} must be positive")
        if self.stop_after < 0:
            raise BigtrainError(f"{prefix}stop_after={self.stop_after} must not be negative")
        if self.warmup_steps < 0 or self.eval_interval < 0 or self.grad_clip < 0 or self.weight_decay < 0 \
                or self.spike_factor < 0:
            raise BigtrainError(f"{prefix}warmup_steps, eval_interval, grad_clip, weight_decay and spike_factor "
                                "must not be negative")
        if not 0 <= self.min_lr_ratio <= 1:
            raise BigtrainError(f"{prefix}min_lr_ratio={self.min_lr_ratio} must be between 0 and 1")
        if self.global_batch_size % self.micro_batch_size:
            raise BigtrainError(f"{prefix}micro_batch_size={self.micro_batch_size} does not divide "
                                f"{prefix}global_batch_size={self.global_batch_size}")
