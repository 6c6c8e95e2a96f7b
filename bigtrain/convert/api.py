"""``bigtrain convert``: reshard a checkpoint to another TP/PP/DP layout (with optimizer state) or consolidate it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bigtrain.convert.checkpoint_io import (CONSOLIDATED, OPTIM_FILE, atomic_dir, check_files,
                                            copy_tokenizer, is_consolidated, is_lora, job_from_meta, layout_of,
                                            load_safetensors, meta_for_layout, model_config, open_checkpoint,
                                            read_weights, write_consolidated, write_meta)
from bigtrain.errors import BigtrainError


def _full_state(ckpt: Path, meta: dict[str, Any], with_optimizer: bool, tmp: Path):
    """(weights, optimizer info or None) of any checkpoint."""
    cfg = model_config(meta, ckpt)
    check_files(ckpt, meta, cfg)
    if is_consolidated(meta):
        weights, _, _ = read_weights(ckpt)
        optim = None
        if with_optimizer and (ckpt / OPTIM_FILE).is_file() and meta.get("optimizer_state"):
            optim = {**meta["optimizer_state"], "tensors": load_safetensors(ckpt / OPTIM_FILE)}
        return weights, optim
    if not with_optimizer:
        weights, _, _ = read_weights(ckpt)
        return weights, None
    from bigtrain.convert.engine import dump_full_state

    return dump_full_state(ckpt, meta, tmp, with_optimizer=True)


def convert(input: str | Path, output: str | Path, tp: int | None = None, pp: int | None = None, dp: int = 1,
            zero_stage: int | None = None, to: str | None = None, with_optimizer: bool | None = None,
            force: bool = False) -> dict[str, Any]:
    """Reshard (``to=None``) or consolidate (``to='consolidated'``). Returns the new bigtrain.json."""
    ckpt, meta = open_checkpoint(input)
    model_config(meta, ckpt)  # fails early, in one line, on a checkpoint without a usable model section
    if is_lora(meta):
        raise BigtrainError(f"{ckpt}: a LoRA checkpoint (adapters on {meta['lora_base'].get('path')}) is not resharded; "
                            "export it with bigtrain export-hf --merge (a full model) or --adapter (PEFT)")
    src = layout_of(meta)
    if to not in (None, CONSOLIDATED):
        raise BigtrainError(f"--to {to}: expected 'consolidated' (or no --to to reshard)")
    out = Path(output).resolve()
    if out == ckpt.resolve():
        raise BigtrainError(f"{output}: output must differ from the input checkpoint")
    if to == CONSOLIDATED:
        carry = bool(with_optimizer)
        with tempfile.TemporaryDirectory(prefix="bigtrain-convert-", dir=out.parent if out.parent.exists() else None) as t:
            weights, optim = _full_state(ckpt, meta, carry, Path(t))
        new = meta_for_layout(meta, 1, 1, 1, None, fmt=CONSOLIDATED)
        if optim:
            new["optimizer_state"] = {k: v for k, v in optim.items() if k != "tensors"}
        with atomic_dir(output, force=force) as tmp:
            new["tokenizer"] = "tokenizer" if copy_tokenizer(ckpt, meta, tmp) else None
            write_consolidated(tmp, weights, new, optim.get("tensors") if optim else None)
            write_meta(tmp, new)
        return new
    tp = tp or int(src["tp"])
    pp = pp or int(src["pp"])
    # The configured stage, not the one the source ran (a DP=1 source ran stage 0; see zero_stage_at).
    configured = meta.get("config", {}).get("parallel", {}).get("zero_stage")
    zero = next(z for z in (zero_stage, configured, src.get("zero_stage"), 1) if z is not None)
    if pp > 1 and zero > 1:
        raise BigtrainError(f"--pp {pp} needs ZeRO stage 0 or 1 but the checkpoint uses zero_stage={zero}; "
                            "pass --zero-stage 1")
    carry = True if with_optimizer is None else with_optimizer
    new = meta_for_layout(meta, tp, pp, dp, zero)
    job = job_from_meta(new, ckpt)
    try:
        job.check_world(tp * pp * dp)
    except BigtrainError as e:
        raise BigtrainError(f"cannot convert {ckpt} to tp={tp} pp={pp} dp={dp}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bigtrain-convert-", dir=out.parent) as t:
        dump = Path(t) / "dump"
        dump.mkdir()
        weights, optim = _full_state(ckpt, meta, carry, dump)
        from bigtrain.convert.engine import write_native

        with atomic_dir(output, force=force) as tmp:
            write_native(tmp, weights, optim, job.to_dict(), dp, Path(t) / "stage")
            new["tokenizer"] = "tokenizer" if copy_tokenizer(ckpt, meta, tmp) else None
            new["optimizer_carried"] = bool(optim and optim.get("tensors"))
            new.pop("optimizer_state", None)
            new.pop("format", None)
            write_meta(tmp, new)
    return new
