"""Read and write bigtrain checkpoints outside a training job.

* ``read_weights(ckpt)``: full (unsharded) fp32 weights under canonical names, from a DeepSpeed checkpoint of
  any TP/PP layout (read offline from the model files) or from a consolidated one.
* Consolidated checkpoints: ``DIR/{model.safetensors, [optimizer.safetensors], bigtrain.json, tokenizer/}``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from bigtrain.checkpoint.manager import META_FILE, TOKENIZER_SUBDIR, checksum_files, read_meta, resolve_checkpoint
from bigtrain.convert import layout as L
from bigtrain.errors import BigtrainError
from bigtrain.io import atomic_write_json
from bigtrain.model.config import ModelConfig

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
CONSOLIDATED = "consolidated"


def _progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit="tensor", leave=False,
                disable=os.environ.get("BIGTRAIN_NO_PROGRESS") == "1")


def open_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint (or run) directory → (checkpoint dir, its bigtrain.json)."""
    p = Path(path)
    if not p.exists():
        raise BigtrainError(f"{p}: no such checkpoint directory")
    ckpt = resolve_checkpoint(p)
    meta = read_meta(ckpt)
    return ckpt, meta


def model_config(meta: dict[str, Any], ckpt: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(meta["config"]["model"])
    except BigtrainError as e:
        raise BigtrainError(f"{ckpt / META_FILE}: config.model: {e}") from None
    except (KeyError, TypeError):
        raise BigtrainError(f"{ckpt / META_FILE}: field 'config.model' is missing") from None


def is_consolidated(meta: dict[str, Any]) -> bool:
    return meta.get("format") == CONSOLIDATED


def layout_of(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = meta.get("config", {})
    lay = dict(meta.get("layout") or {})
    par = cfg.get("parallel", {})
    lay.setdefault("tp", par.get("tp", 1))
    lay.setdefault("pp", par.get("pp", 1))
    lay.setdefault("dp", 1)
    if "zero_stage" not in lay:
        lay["zero_stage"] = stage_ran(meta, par.get("zero_stage", 1), int(lay["dp"]))
    return lay


def stage_ran(meta: dict[str, Any], zero_stage: int, dp: int) -> int:
    """The ZeRO stage a run of ``meta``'s precision with ``zero_stage`` configured runs at ``dp``."""
    from bigtrain.parallel.config import ParallelConfig

    precision = meta.get("config", {}).get("train", {}).get("precision", "fp32")
    return ParallelConfig(zero_stage=zero_stage).zero_stage_at(dp, precision)


def needs_engine(meta: dict[str, Any]) -> bool:
    """True when the fp32 weights live only in the optimizer's partitions (ZeRO-3, or bf16 training)."""
    lay = layout_of(meta)
    precision = meta.get("config", {}).get("train", {}).get("precision", "fp32")
    return lay.get("zero_stage") == 3 or precision == "bf16"


def _n_layer_files(cfg: ModelConfig) -> int:
    # embedding, blocks, final norm, lm_head; a tied output projection is the embedding's module, saved once.
    return cfg.n_layers + (2 if cfg.tie_embeddings else 3)


def expected_files(meta: dict[str, Any], cfg: ModelConfig) -> list[str]:
    lay = layout_of(meta)
    tp, pp, dp, zero = int(lay["tp"]), int(lay["pp"]), int(lay["dp"]), lay.get("zero_stage")
    files = []
    if pp > 1:
        files += [f"layer_{i:02d}-model_{t:02d}-model_states.pt" for i in range(_n_layer_files(cfg)) for t in range(tp)]
        files += [f"mp_rank_{r:02d}_model_states.pt" for r in range(tp * pp)]
        if zero == 1:
            files += [f"zero_pp_rank_{d}_mp_rank_{r:02d}_optim_states.pt" for d in range(dp) for r in range(tp * pp)]
    elif zero == 3:
        files += [f"zero_pp_rank_{d}_mp_rank_{t:02d}_{kind}_states.pt" for d in range(dp) for t in range(tp)
                  for kind in ("model", "optim")]
    else:
        files += [f"mp_rank_{t:02d}_model_states.pt" for t in range(tp)]
        if zero in (1, 2):
            files += [f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt" for d in range(dp) for t in range(tp)]
    return files


def check_files(ckpt: Path, meta: dict[str, Any], cfg: ModelConfig) -> None:
    if is_consolidated(meta):
        if not (ckpt / MODEL_FILE).is_file():
            raise BigtrainError(f"{ckpt}: {MODEL_FILE} is missing (consolidated checkpoint)")
        return
    lay = layout_of(meta)
    for name in expected_files(meta, cfg):
        if not (ckpt / name).is_file():
            raise BigtrainError(f"{ckpt}: {name} is missing (expected for layout tp={lay['tp']} pp={lay['pp']} "
                                f"dp={lay['dp']} zero_stage={lay['zero_stage']})")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise BigtrainError(f"{path}: cannot be read as a DeepSpeed checkpoint file ({type(e).__name__})") from None


def _check_shapes(weights: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    want = L.expected_shapes(cfg)
    missing = [k for k in want if k not in weights]
    if missing:
        raise BigtrainError(f"{where}: tensor {missing[0]} is missing")
    extra = [k for k in weights if k not in want]
    if extra:
        raise BigtrainError(f"{where}: unexpected tensor {extra[0]}")
    for k, shape in want.items():
        if tuple(weights[k].shape) != shape:
            raise BigtrainError(f"{where}: tensor {k} has shape {tuple(weights[k].shape)}, expected {shape}")


def read_weights_offline(ckpt: Path, meta: dict[str, Any], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Full fp32 weights from DeepSpeed's model files (valid for ZeRO 0-2 in fp32)."""
    check_files(ckpt, meta, cfg)
    lay = layout_of(meta)
    tp, pp = int(lay["tp"]), int(lay["pp"])
    parts: dict[str, list[torch.Tensor | None]] = {}
    if pp > 1:
        items = [(i, t) for i in range(_n_layer_files(cfg)) for t in range(tp)]
        for i, t in _progress(items, "reading layers"):
            sd = _torch_load(ckpt / f"layer_{i:02d}-model_{t:02d}-model_states.pt")
            for key, value in sd.items():
                name = L.layer_file_name(i, key, cfg)
                if name is None or value is None:
                    continue
                parts.setdefault(name, [None] * tp)[t] = value
    else:
        for t in _progress(range(tp), "reading tensor-parallel ranks"):
            sd = _torch_load(ckpt / f"mp_rank_{t:02d}_model_states.pt")
            module = sd.get("module") if isinstance(sd, dict) else None
            if not isinstance(module, dict):
                raise BigtrainError(f"{ckpt / f'mp_rank_{t:02d}_model_states.pt'}: no 'module' state dict")
            for key, value in module.items():
                if key.endswith("_extra_state") or value is None:
                    continue
                parts.setdefault(key, [None] * tp)[t] = value
    weights = {}
    for name, shards in parts.items():
        if any(s is None for s in shards):
            raise BigtrainError(f"{ckpt}: tensor {name} is missing from some tensor-parallel rank's file")
        weights[name] = L.merge([s.float() for s in shards], name, cfg).contiguous()
    _check_shapes(weights, cfg, str(ckpt))
    return weights


def is_lora(meta: dict[str, Any]) -> bool:
    return bool(meta.get("lora_base"))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(canonical fp32 weights, bigtrain.json, checkpoint dir) for a checkpoint of any layout (a LoRA checkpoint
    holds adapters only: ``bigtrain.convert.weights_io.read_merged_weights`` adds its base)."""
    ckpt, meta = open_checkpoint(path)
    cfg = model_config(meta, ckpt)
    if is_lora(meta):
        raise BigtrainError(f"{ckpt}: a LoRA checkpoint holds adapters only, not a model's weights")
    if is_consolidated(meta):
        check_files(ckpt, meta, cfg)
        weights = load_safetensors(ckpt / MODEL_FILE)
        _check_shapes(weights, cfg, str(ckpt / MODEL_FILE))
        return weights, meta, ckpt
    if needs_engine(meta):
        check_files(ckpt, meta, cfg)
        from bigtrain.convert.engine import dump_full_state

        with tempfile.TemporaryDirectory(prefix="bigtrain-convert-") as tmp:
            weights, _ = dump_full_state(ckpt, meta, Path(tmp), with_optimizer=False)
        _check_shapes(weights, cfg, str(ckpt))
        return weights, meta, ckpt
    return read_weights_offline(ckpt, meta, cfg), meta, ckpt


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BigtrainError(f"{path}: not a readable safetensors file ({e})") from None


# ------------------------------------------------------------------------------------- output helpers
@contextmanager
def atomic_dir(output: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``output``; on success rename it to ``output``."""
    out = Path(output)
    if out.exists() and any(out.iterdir()) if out.is_dir() else out.exists():
        if not force:
            raise BigtrainError(f"{out}: output already exists (remove it or choose another --output)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_tokenizer(ckpt: Path, meta: dict[str, Any], dest: Path) -> bool:
    sub = meta.get("tokenizer")
    if sub and (ckpt / sub).is_dir():
        shutil.copytree(ckpt / sub, dest / TOKENIZER_SUBDIR, dirs_exist_ok=True)
        return True
    return False


def meta_for_layout(meta: dict[str, Any], tp: int, pp: int, dp: int, zero_stage: int | None,
                    fmt: str | None = None, tokenizer: bool = True) -> dict[str, Any]:
    new = copy.deepcopy(meta)
    for k in ("saved_at", "save_seconds", "files"):
        new.pop(k, None)
    cfg = new.setdefault("config", {})
    par = cfg.setdefault("parallel", {})
    par["tp"], par["pp"] = tp, pp
    if zero_stage is not None:
        par["zero_stage"] = zero_stage
    ran = None if zero_stage is None else stage_ran(meta, zero_stage, dp)
    new["layout"] = {"tp": tp, "pp": pp, "dp": dp, "zero_stage": ran}
    new["converted_from"] = layout_of(meta)
    if fmt:
        new["format"] = fmt
    else:
        new.pop("format", None)
    new["tokenizer"] = TOKENIZER_SUBDIR if tokenizer else None
    return new


def write_meta(ckpt_dir: Path, meta: dict[str, Any]) -> None:
    """bigtrain.json last, listing every other file's size and sha256 (as the checkpoint manager does)."""
    atomic_write_json(ckpt_dir / META_FILE, {**meta, "files": checksum_files(ckpt_dir)})


def write_consolidated(out_dir: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any],
                       optimizer: dict[str, torch.Tensor] | None = None) -> None:
    """Write model.safetensors (+ optimizer.safetensors) and bigtrain.json into ``out_dir`` (a temp dir)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in weights.items()}, str(out_dir / MODEL_FILE),
              metadata={"format": "pt", "bigtrain": "consolidated"})
    if optimizer:
        save_file({k: v.detach().float().contiguous() for k, v in optimizer.items()}, str(out_dir / OPTIM_FILE),
                  metadata={"format": "pt"})


def job_from_meta(meta: dict[str, Any], ckpt: Path, **parallel):
    """The checkpoint's JobConfig, with parallel.* replaced by ``parallel``."""
    from bigtrain.config.job import load_job_config

    cfg = copy.deepcopy(meta.get("config") or {})
    cfg.setdefault("parallel", {}).update({k: v for k, v in parallel.items() if v is not None})
    try:
        return load_job_config(None, [], base=cfg)
    except BigtrainError as e:
        raise BigtrainError(f"{ckpt / META_FILE}: {e}") from None
