"""Non-finite steps are skipped, not applied.

A non-finite loss is left to propagate: its NaN gradients reach every rank (through the data-parallel
all-reduce, the tensor-parallel collectives and the pipeline's backward sends), so each rank decides on
its own, with no extra collective, that the update must be skipped. DeepSpeed's ZeRO-1/2 optimizer
already skips such a step; :class:`SkippingAdamW` does the same for the paths that hand it the raw
gradients (ZeRO-0, ZeRO-3, bf16). Skipped steps still consume their data, so a resumed run does not
meet the bad batch again.
"""

from __future__ import annotations

import os

import torch

from bigtrain.model.llama import lm_loss

FAULT_ENV = "BIGTRAIN_FAULT_NAN_STEPS"


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that leaves parameters and moments untouched when any gradient is not finite."""

    skipped = 0

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            self.skipped += 1
            return None
        return super().step(closure)


class GuardedLoss:
    """The model's loss function, with test-only fault injection.

    ``BIGTRAIN_FAULT_NAN_STEPS=5,6`` turns the loss of those (1-based) optimizer steps into NaN, to
    exercise the skip path end to end; the trainer sets :attr:`step` before each step.
    """

    def __init__(self):
        self.step = 0
        raw = os.environ.get(FAULT_ENV, "")
        self.nan_steps = {int(s) for s in raw.split(",") if s.strip()}

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = lm_loss(logits, labels)
        if self.step in self.nan_steps:
            loss = loss * float("nan")
        return loss
