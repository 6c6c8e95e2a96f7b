"""Qwen3 dense (``Qwen3ForCausalLM``): RMSNorm on each head's queries and keys, no biases."""

from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.model.families.base import DECODER_BLOCK, QK_NORM, Family


def _from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if hf.get("use_sliding_window"):
        raise BigtrainError(f"{where}: use_sliding_window=true is not supported for qwen3 (expected false)")
    return {}


FAMILY = Family(name="qwen3", hf_model_type="qwen3", hf_class="Qwen3ForCausalLM", block=DECODER_BLOCK + QK_NORM,
                hf_extra_in=_from_hf,
                hf_extra_out=lambda cfg: {"attention_bias": False, "use_sliding_window": False})
