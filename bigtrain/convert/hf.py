"""Hugging Face import: config.json through the model family, weights renamed by the family's tensor table, the
tokenizer and generation config carried; and the safetensors shard writer the export shares."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bigtrain.convert import layout as L
from bigtrain.convert.checkpoint_io import _progress, atomic_dir
from bigtrain.errors import BigtrainError
from bigtrain.io import read_json
from bigtrain.model.config import ModelConfig
from bigtrain.tokenizer.base import GENERATION_CONFIG


# ------------------------------------------------------------------------------------------- config
def model_config_from_hf(hf: dict[str, Any], where: str) -> ModelConfig:
    """The family named by ``model_type`` reads its config.json."""
    from bigtrain.model.families import family_for_hf

    return family_for_hf(hf.get("model_type"), where).from_hf_config(hf, where)


# ------------------------------------------------------------------------------------------- weights
def save_sharded(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(_progress(shards, "writing shards"), 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------- import
def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    from bigtrain.convert.checkpoint_io import load_safetensors

    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            raise BigtrainError(f"{index}: not a valid safetensors index (no weight_map)") from None
        out = {}
        for f in _progress(files, "reading shards"):
            if not (hf_dir / f).is_file():
                raise BigtrainError(f"{hf_dir}: {f} is missing (listed in {index.name})")
            out.update(load_safetensors(hf_dir / f))
        return out
    if (hf_dir / "model.safetensors").is_file():
        return load_safetensors(hf_dir / "model.safetensors")
    if (hf_dir / "pytorch_model.bin").is_file():
        return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise BigtrainError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def hf_to_canonical(hf_weights: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    names = L.to_hf_names(cfg)
    shapes = L.expected_shapes(cfg)
    out = {}
    for ours, theirs in names.items():
        if theirs not in hf_weights:
            raise BigtrainError(f"{where}: tensor {theirs} is missing (the {cfg.family} family's table lists it)")
        t = hf_weights[theirs]
        if tuple(t.shape) != shapes[ours]:
            raise BigtrainError(f"{where}: tensor {theirs} has shape {tuple(t.shape)}, expected {shapes[ours]}")
        out[ours] = t.float().contiguous()
    # A tied model's files sometimes also carry lm_head.weight (a copy of the embedding); rotary buffers
    # are recomputed. Anything else would be silently dropped, so it is refused.
    allowed = set(names.values()) | {"lm_head.weight"}
    extra = sorted(k for k in hf_weights if k not in allowed and "rotary_emb" not in k)
    if extra:
        raise BigtrainError(f"{where}: tensor {extra[0]} is not in the {cfg.family} family's table "
                            f"({len(extra)} unknown tensor(s)); refusing to drop it")
    return out


def check_import_tokenizer(hf_dir: Path, tokenizer: str | Path | None, cfg: ModelConfig) -> None:
    """Fail before any heavy work if the tokenizer does not load or does not fit the vocabulary."""
    with tempfile.TemporaryDirectory() as tmp:
        import_tokenizer(hf_dir, tokenizer, cfg, Path(tmp))


def import_tokenizer(hf_dir: Path, tokenizer: str | Path | None, cfg: ModelConfig, dest: Path) -> bool:
    """Copy the tokenizer (``--tokenizer``, else the model directory's own files, unchanged) and the model's
    generation_config.json into ``dest/tokenizer``. False when there is no tokenizer to carry."""
    from bigtrain.checkpoint.manager import TOKENIZER_SUBDIR
    from bigtrain.tokenizer import load_tokenizer

    if tokenizer is None and not any((hf_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return False
    tok = load_tokenizer(tokenizer if tokenizer is not None else hf_dir)
    if tok.vocab_size > cfg.vocab_size:
        raise BigtrainError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens but config.json vocab_size="
                            f"{cfg.vocab_size}")
    out = dest / TOKENIZER_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    for f in tok.files():
        shutil.copyfile(f, out / f.name)
    if (hf_dir / GENERATION_CONFIG).is_file():
        shutil.copyfile(hf_dir / GENERATION_CONFIG, out / GENERATION_CONFIG)
    return True


def import_hf(input: str | Path, output: str | Path, tp: int = 1, pp: int = 1, dp: int = 1,
              zero_stage: int | None = None, tokenizer: str | Path | None = None, to: str | None = None,
              base_config: dict[str, Any] | None = None, force: bool = False) -> Path:
    from bigtrain.config.job import JobConfig, load_job_config
    from bigtrain.convert.checkpoint_io import CONSOLIDATED, write_consolidated, write_meta
    from bigtrain.convert.engine import write_native

    hf_dir = Path(input)
    if not hf_dir.is_dir():
        raise BigtrainError(f"{hf_dir}: no such Hugging Face model directory")
    conf_file = hf_dir / "config.json"
    if not conf_file.is_file():
        raise BigtrainError(f"{hf_dir}: config.json is missing")
    hf = read_json(conf_file)
    cfg = model_config_from_hf(hf, str(conf_file))
    check_import_tokenizer(hf_dir, tokenizer, cfg)
    weights = hf_to_canonical(read_hf_weights(hf_dir), cfg, str(hf_dir))
    data = dict(base_config or JobConfig().to_dict())
    data["model"] = cfg.to_dict()
    zero = zero_stage if zero_stage is not None else (1 if pp > 1 else data.get("parallel", {}).get("zero_stage", 1))
    data["parallel"] = {**data.get("parallel", {}), "tp": tp, "pp": pp, "zero_stage": zero}
    data["tokenizer"] = None
    try:
        job = load_job_config(None, [], base=data)
        job.check_world(tp * pp * dp)
    except BigtrainError as e:
        raise BigtrainError(f"{conf_file}: cannot lay out this model as tp={tp} pp={pp}: {e}") from None
    with atomic_dir(output, force=force) as tmp:
        has_tok = import_tokenizer(hf_dir, tokenizer, cfg, tmp)
        meta = {"config": job.to_dict(), "step": 0, "loader": {"consumed_samples": 0}, "consumed_tokens": 0,
                "consumed_samples": 0, "tokenizer": "tokenizer" if has_tok else None, "imported_from": str(hf_dir)}
        if to == CONSOLIDATED:
            meta.update(format=CONSOLIDATED, layout={"tp": 1, "pp": 1, "dp": 1, "zero_stage": None})
            write_consolidated(tmp, weights, meta)
            write_meta(tmp, meta)
        else:
            meta["layout"] = {"tp": tp, "pp": pp, "dp": dp, "zero_stage": job.parallel.zero_stage_at(dp, job.train.precision)}
            with tempfile.TemporaryDirectory(prefix="bigtrain-import-", dir=tmp.parent) as stage:
                write_native(tmp, weights, None, job.to_dict(), dp, Path(stage))
            write_meta(tmp, meta)
    return Path(output)
