"""Starting weights for a run (``bigtrain train --init``, ``bigtrain finetune --init``): a bigtrain checkpoint
of any layout or a Hugging Face model directory. The architecture and the tokenizer come with them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from bigtrain.errors import BigtrainError

INIT_TOKENIZER = "init-tokenizer"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and not (path / "bigtrain.json").is_file() \
        and not (path / "checkpoints").is_dir()


def init_model_config(init: Path):
    """(ModelConfig, kind) of the starting weights: a bigtrain checkpoint (any layout) or an HF model dir."""
    if not init.exists():
        raise BigtrainError(f"--init {init}: no such checkpoint or Hugging Face directory")
    if is_hf_dir(init):
        from bigtrain.convert.hf import model_config_from_hf

        try:
            hf = json.loads((init / "config.json").read_text())
        except ValueError:
            raise BigtrainError(f"{init / 'config.json'}: not valid JSON") from None
        return model_config_from_hf(hf, str(init / "config.json")), "hf"
    from bigtrain.convert.checkpoint_io import model_config, open_checkpoint

    ckpt, meta = open_checkpoint(init)
    return model_config(meta, ckpt), "bigtrain"


def read_init_weights(init: Path, kind: str, cfg) -> dict:
    if kind == "hf":
        from bigtrain.convert.hf import hf_to_canonical, read_hf_weights

        return hf_to_canonical(read_hf_weights(init), cfg, str(init))
    from bigtrain.convert.checkpoint_io import read_weights

    weights, _, _ = read_weights(init)
    return weights


def make_init_fn(init: Path, kind: str, cfg) -> Callable:
    """``init_fn(module, topo)`` for build_engine: this rank's slice of every full weight."""

    def init_fn(module, topo) -> None:
        import torch

        from bigtrain.convert import layout as L

        weights = read_init_weights(init, kind, cfg)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name not in weights:
                    raise BigtrainError(f"--init {init}: tensor {name} is missing")
                local = L.shard(weights[name], name, topo.tp, topo.tp_rank, cfg)
                if tuple(local.shape) != tuple(p.shape):
                    raise BigtrainError(f"--init {init}: tensor {name} has shape {tuple(local.shape)} here, the "
                                        f"model expects {tuple(p.shape)}")
                p.data.copy_(local.to(p.dtype))

    return init_fn


def init_tokenizer_dir(init: Path, kind: str, cfg, run_dir: Path) -> Path | None:
    """The tokenizer that comes with the starting weights (HF: imported once into RUN/init-tokenizer)."""
    from bigtrain.checkpoint.manager import TOKENIZER_SUBDIR

    if kind == "bigtrain":
        from bigtrain.convert.checkpoint_io import open_checkpoint

        ckpt, meta = open_checkpoint(init)
        sub = meta.get("tokenizer")
        return ckpt if sub and (ckpt / sub).is_dir() else None  # load_tokenizer(ckpt) keeps training's EOS
    dest = run_dir / INIT_TOKENIZER
    if dest.is_dir():  # renamed into place whole, so present means complete
        return dest
    if not (init / "tokenizer.model").is_file() and not (init / "tokenizer.json").is_file():
        return None
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        import tempfile

        from bigtrain.convert.hf import import_tokenizer

        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".init-tok-", dir=run_dir) as tmp:
            import_tokenizer(init, None, cfg, Path(tmp))
            os.replace(Path(tmp) / TOKENIZER_SUBDIR, dest)
        return dest
    deadline = time.time() + 600
    while not dest.is_dir():
        if time.time() > deadline:
            raise BigtrainError(f"{dest}: rank 0 did not import the tokenizer of {init}")
        time.sleep(0.2)
    return dest


def apply_init(base: dict[str, Any], init: Path, run_dir: Path) -> tuple[dict[str, Any], Callable]:
    """The raw job config with ``model`` taken from the starting weights (only ``model.seq_len`` may be set)
    and ``tokenizer`` defaulting to theirs; and the ``init_fn`` that loads them."""
    cfg, kind = init_model_config(init)
    model = cfg.to_dict()
    for k, v in dict(base.get("model") or {}).items():
        if k == "seq_len":
            model["seq_len"] = v
        elif k in model and v != model[k]:
            raise BigtrainError(f"model.{k}={v!r} differs from the starting weights' {model[k]!r} ({init}); leave "
                                "model.* out of the config when starting from --init (only model.seq_len may change)")
    base = {**base, "model": model}
    if not base.get("tokenizer"):
        tok_dir = init_tokenizer_dir(init, kind, cfg, run_dir)
        base["tokenizer"] = str(tok_dir) if tok_dir is not None else None
    return base, make_init_fn(init, kind, cfg)
