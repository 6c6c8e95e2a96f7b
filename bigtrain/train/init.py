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


class InitWeights:
    """``init(module, topo)`` for build_engine: sets this rank's slice of every full weight of the starting
    checkpoint or Hugging Face directory ``path``."""

    def __init__(self, path: Path, kind: str, cfg):
        path = Path(path).resolve()
        if kind == "bigtrain":  # a run directory means its newest checkpoint now, not whatever is newest later
            from bigtrain.checkpoint.manager import resolve_checkpoint

            path = resolve_checkpoint(path).resolve()
        self.path, self.kind, self.cfg = path, kind, cfg

    def __call__(self, module, topo) -> None:
        import torch

        from bigtrain.convert import layout as L
        from bigtrain.convert.weights_io import read_full_weights

        weights = read_full_weights(self.path, self.kind, self.cfg)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name not in weights:
                    raise BigtrainError(f"--init {self.path}: tensor {name} is missing")
                local = L.shard(weights[name], name, topo.tp, topo.tp_rank, self.cfg)
                if tuple(local.shape) != tuple(p.shape):
                    raise BigtrainError(f"--init {self.path}: tensor {name} has shape {tuple(local.shape)} here, "
                                        f"the model expects {tuple(p.shape)}")
                p.data.copy_(local.to(p.dtype))

    def reference(self) -> dict[str, Any]:
        """What a LoRA checkpoint records of its base: path, kind and a checksum of the weights' files."""
        from bigtrain.convert.weights_io import weights_digest

        return {"path": str(self.path), "kind": self.kind, "sha256": weights_digest(self.path, self.kind)}


def recorded_lora_base(run_dir: Path, cfg) -> InitWeights | None:
    """The base a LoRA run's newest checkpoint records, for resuming without --init (``bigtrain train --resume``,
    a Ray Train worker); the trainer verifies its checksum against the checkpoint's."""
    from bigtrain.checkpoint.manager import latest_checkpoint, read_meta

    found = latest_checkpoint(run_dir)
    base = read_meta(found).get("lora_base") if found else None
    return InitWeights(Path(base["path"]), base["kind"], cfg) if base else None


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
    return base, InitWeights(init, kind, cfg)
