"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): biases on the q/k/v projections only."""

from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.model.families.base import DECODER_BLOCK, QKV_BIAS, Family


def _from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    # Qwen2 applies its window only to layers from max_window_layers on; bigtrain has one window for all.
    if hf.get("use_sliding_window"):
        raise BigtrainError(f"{where}: use_sliding_window=true is not supported for qwen2 (expected false, "
                            "as in every released Qwen2/2.5 model)")
    return {}


FAMILY = Family(name="qwen2", hf_model_type="qwen2", hf_class="Qwen2ForCausalLM", block=DECODER_BLOCK + QKV_BIAS,
                hf_extra_in=_from_hf, hf_extra_out=lambda cfg: {"use_sliding_window": False})
