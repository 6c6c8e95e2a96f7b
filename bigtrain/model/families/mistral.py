"""Mistral (``MistralForCausalLM``): the Llama decoder with an optional sliding attention window."""

from typing import Any

from bigtrain.model.families.base import Family


def _from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    return {"sliding_window": hf.get("sliding_window")}


FAMILY = Family(name="mistral", hf_model_type="mistral", hf_class="MistralForCausalLM", sliding_window=True,
                hf_extra_in=_from_hf, hf_extra_out=lambda cfg: {"sliding_window": cfg.sliding_window})
