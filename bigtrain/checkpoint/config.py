"""Checkpoint cadence and retention."""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class CheckpointConfig(Config):
    interval: int = 50
    """Save every this many steps (and always at the last step); 0 saves only at the end."""
    keep: int = 3
    """Keep the newest this many checkpoints; older ones are deleted after a save completes."""

    def validate(self, prefix: str = "checkpoint.") -> None:
        if self.interval < 0:
            raise BigtrainError(f"{prefix}interval={self.interval} must not be negative")
        if self.keep < 1:
            raise BigtrainError(f"{prefix}keep={self.keep} must be at least 1")
