"""Llama 1/2/3.x (``LlamaForCausalLM``): the plain decoder; rope scaling ``linear`` and ``llama3``."""

from bigtrain.model.families.base import Family

FAMILY = Family(name="llama", hf_model_type="llama", hf_class="LlamaForCausalLM",
                rope_types=("none", "linear", "llama3"),
                hf_extra_out=lambda cfg: {"attention_bias": False, "mlp_bias": False})
