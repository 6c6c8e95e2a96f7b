"""Load DeepSpeed checkpoint files with ``torch.load(weights_only=True)``.

DeepSpeed unpickles its files with ``weights_only=False``, which runs any code a crafted file carries.
Its files hold only tensors, containers and a few DeepSpeed value types, so the restricted unpickler
suffices once those types are allow-listed.
"""

from __future__ import annotations

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine


def _safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loading(engine) -> None:
    """Swap the engine's checkpoint engine for one that loads with ``weights_only=True``."""
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        safe = SafeTorchCheckpointEngine.__new__(SafeTorchCheckpointEngine)
        safe.__dict__.update(engine.checkpoint_engine.__dict__)
        engine.checkpoint_engine = safe
