"""A parameter's fp32 value under any ZeRO stage or precision: DeepSpeed's master copy where it keeps one."""

from __future__ import annotations

import torch


def has_fp32_master(p: torch.Tensor) -> bool:
    """True when DeepSpeed holds the fp32 value apart from ``p`` (ZeRO-1/2/3 or its bf16 optimizer).

    Under ZeRO-1/2 at DP > 1 a parameter outside this rank's partition has ``_hp_mapping = None``; it still takes
    that path, whose get is a collective over DP (every rank must call it) and whose set is a no-op."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def full_fp32(p: torch.Tensor) -> torch.Tensor:
    """This rank's whole (tensor-parallel) slice of ``p`` in fp32; collective over DP when ``has_fp32_master``."""
    if has_fp32_master(p):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p)
    return p
