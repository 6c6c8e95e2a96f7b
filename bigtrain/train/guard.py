"""Non-finite steps are skipped, not applied.

A non-finite loss is left to propagate: its NaN gradients reach every rank (through the data-parallel
all-reduce, the tensor-parallel collectives and the pipeline's backward sends). DeepSpeed's ZeRO-1/2
optimizer already skips such a step; :class:`SkippingAdamW` does the same for the paths that hand it
gradients (ZeRO-3, bf16) and, with :class:`GradNormClip`, for fp32 ZeRO-0, where DeepSpeed hands it the
model's own gradients and neither reports the norm nor counts pipeline stages in it. There the global
norm, one all-reduce over the model-parallel ranks, decides for every rank alike. Skipped steps still
consume their data, so a resumed run does not meet the bad batch again.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist

from bigtrain.model.llama import lm_loss

FAULT_ENV = "BIGTRAIN_FAULT_NAN_STEPS"
NAN_GRAD_ENV = "BIGTRAIN_FAULT_NAN_GRAD_STEPS"
SPIKE_ENV = "BIGTRAIN_FAULT_SPIKE_STEPS"
SPIKE_SCALE = 10.0


def _steps(env: str) -> set[int]:
    return {int(s) for s in os.environ.get(env, "").split(",") if s.strip()}


class GradNormClip:
    """The global L2 norm of unpartitioned gradients, and clipping to ``max_norm`` (0: no clipping).

    Each gradient is counted once over the model-parallel ranks of a replica: tensor-parallel shards on
    every TP rank, replicated tensors (norms) on TP rank 0, a pipeline-tied weight on its first stage
    only. Data-parallel replicas hold the same averaged gradients, so they need no reduction."""

    def __init__(self, max_norm: float, model_parallel_group: Any, tp_rank: int):
        self.max_norm = max_norm
        self.group = model_parallel_group
        self.tp_rank = tp_rank

    def __call__(self, params: list[torch.Tensor]) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        counted = [p.grad for p in params if p.grad is not None and not getattr(p, "ds_pipe_replicated", False)
                   and (self.tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]
        sq = (torch.stack(torch._foreach_norm(counted)).float().pow(2).sum() if counted
              else torch.zeros((), dtype=torch.float32))
        if dist.get_world_size(self.group) > 1:
            dist.all_reduce(sq, group=self.group)
        norm = float(sq.sqrt())
        if self.max_norm > 0 and math.isfinite(norm) and norm + 1e-6 > self.max_norm:
            torch._foreach_mul_(grads, self.max_norm / (norm + 1e-6))  # DeepSpeed's ZeRO rule
        return norm


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that leaves parameters and moments untouched when any gradient is not finite."""

    skipped = 0
    clip: GradNormClip | None = None
    """Set when DeepSpeed hands this optimizer the model's own gradients (fp32 ZeRO-0): it then measures
    and clips the global norm, and reports it to the engine as ``_global_grad_norm``."""

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        if self.clip is not None:
            self._global_grad_norm = self.clip(params)
            finite = math.isfinite(self._global_grad_norm)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            finite = not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
        if not finite:
            self.skipped += 1
            return None
        return super().step(closure)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class GuardedLoss:
    """The model's loss function, with test-only fault injection for those (1-based) optimizer steps; the
    trainer sets :attr:`step` before each step.

    ``BIGTRAIN_FAULT_NAN_STEPS=5,6``: the loss is NaN. ``BIGTRAIN_FAULT_NAN_GRAD_STEPS=5``: the loss stays finite,
    its gradients are NaN. ``BIGTRAIN_FAULT_SPIKE_STEPS=12``: the loss reads ``SPIKE_SCALE`` × its value, its
    gradients are unchanged (a finite spike that must warn, not skip).
    """

    def __init__(self):
        self.step = 0
        self.nan_steps = _steps(FAULT_ENV)
        self.nan_grad_steps = _steps(NAN_GRAD_ENV)
        self.spike_steps = _steps(SPIKE_ENV)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = lm_loss(logits, labels)
        if self.step in self.nan_steps:
            loss = loss * float("nan")
        if self.step in self.nan_grad_steps:
            loss = _NanGrad.apply(loss)
        if self.step in self.spike_steps:
            loss = loss + (SPIKE_SCALE - 1) * loss.detach()
        return loss
