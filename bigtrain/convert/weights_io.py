"""Full weights from whatever a run starts from or produced: a Hugging Face directory, a bigtrain checkpoint of any
layout, or a LoRA checkpoint (its adapters on the base it records); and the checksum that pins a LoRA run's base."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from bigtrain.checkpoint.manager import META_FILE, verify_checkpoint
from bigtrain.convert.checkpoint_io import is_lora, load_safetensors, model_config, open_checkpoint, read_weights
from bigtrain.convert.hf import hf_to_canonical, read_hf_weights
from bigtrain.errors import BigtrainError
from bigtrain.io import sha256_file

HF_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")


def read_full_weights(path: Path, kind: str, cfg) -> dict[str, torch.Tensor]:
    """Canonical fp32 weights of a Hugging Face directory (``kind="hf"``) or a bigtrain checkpoint (a LoRA
    checkpoint: merged)."""
    if kind == "hf":
        return hf_to_canonical(read_hf_weights(path), cfg, str(path))
    return read_merged_weights(path)[0]


def weights_digest(path: Path, kind: str) -> str:
    """sha256 over the weight files of a Hugging Face directory (their contents; config.json and the tokenizer are
    left out), or over a bigtrain checkpoint's bigtrain.json once every file it lists has been verified against
    its own sha256. Reads every byte of the weights: seconds per 10 GB."""
    h = hashlib.sha256()
    if kind == "hf":
        files = sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(HF_WEIGHT_SUFFIXES))
        if not files:
            raise BigtrainError(f"{path}: no weight files (*.safetensors, *.bin)")
        for f in files:
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    ckpt, _ = open_checkpoint(path)
    reason = verify_checkpoint(ckpt)
    if reason is not None:
        raise BigtrainError(f"{path}: the base checkpoint does not verify: {reason}")
    h.update((ckpt / META_FILE).read_bytes())
    return h.hexdigest()


def read_lora(ckpt: Path, meta: dict[str, Any]):
    """(base weights, full fp32 adapters, LoraConfig) of a LoRA checkpoint, its base checked against the checksum
    the run recorded."""
    from bigtrain.model.lora import ADAPTER_FILE, LoraConfig, adapter_table

    cfg = model_config(meta, ckpt)
    lora = LoraConfig.from_dict(meta["config"].get("lora") or {}, prefix="lora.")
    base = meta["lora_base"]
    path = Path(base["path"])
    if not path.exists():
        raise BigtrainError(f"{ckpt}: the LoRA base {path} is gone (the adapters need the weights they were "
                            "trained on)")
    digest = weights_digest(path, base["kind"])
    if digest != base["sha256"]:
        raise BigtrainError(f"{ckpt}: the LoRA base {path} has changed since training (sha256 {digest[:16]}…, "
                            f"recorded {str(base['sha256'])[:16]}…)")
    if not (ckpt / ADAPTER_FILE).is_file():
        raise BigtrainError(f"{ckpt}: {ADAPTER_FILE} is missing (LoRA checkpoint)")
    adapters = load_safetensors(ckpt / ADAPTER_FILE)
    want = {name: row.shape for name, row in adapter_table(cfg, lora).items()}
    if set(adapters) != set(want) or any(tuple(adapters[k].shape) != v for k, v in want.items()):
        raise BigtrainError(f"{ckpt / ADAPTER_FILE}: its tensors do not match lora {lora.to_dict()}")
    return read_full_weights(path, base["kind"], cfg), adapters, lora


def read_merged_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """``read_weights``, with a LoRA checkpoint's adapters merged into its base."""
    ckpt, meta = open_checkpoint(path)
    if not is_lora(meta):
        return read_weights(ckpt)
    from bigtrain.model.lora import merge_adapters

    base, adapters, lora = read_lora(ckpt, meta)
    return merge_adapters(base, adapters, lora), meta, ckpt
