"""Model families: one module each (``llama``, ``mistral``, ``qwen2``, ``qwen3``), chosen by ``model.family``
or, on import, by the Hugging Face ``model_type``. See ``base`` for what a family declares."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

from bigtrain.errors import BigtrainError
from bigtrain.model.families import llama, mistral, qwen2, qwen3
from bigtrain.model.families.base import TIED_EMBED, Family, TensorSpec

if TYPE_CHECKING:
    from bigtrain.model.config import ModelConfig

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (llama, mistral, qwen2, qwen3)}

__all__ = ["FAMILIES", "Family", "TensorSpec", "TIED_EMBED", "get_family", "family_for_hf", "tensor_table"]


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise BigtrainError(f"model.family={name!r} is not one of {', '.join(FAMILIES)}") from None


def family_for_hf(model_type: str | None, where: str) -> Family:
    for fam in FAMILIES.values():
        if fam.hf_model_type == model_type:
            return fam
    known = ", ".join(repr(f.hf_model_type) for f in FAMILIES.values())
    raise BigtrainError(f"{where}: model_type {model_type!r} is not supported (expected one of {known})")


def tensor_table(cfg: "ModelConfig") -> dict[str, TensorSpec]:
    """Canonical name → row, in model order (cached per configuration: converters look rows up by name)."""
    return _table(json.dumps(cfg.to_dict(), sort_keys=True))


@lru_cache(maxsize=16)
def _table(cfg_json: str) -> dict[str, TensorSpec]:
    from bigtrain.model.config import ModelConfig

    cfg = ModelConfig.from_dict(json.loads(cfg_json))
    return {t.name: t for t in cfg.arch.tensors(cfg)}
