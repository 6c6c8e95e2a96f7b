"""Fine-tuning = the pretraining Trainer with starting weights (``init_fn``) and SFT data (``loader_factory``).

Everything else is shared with ``bigtrain train``: parallel layouts, launchers, checkpoints (plain bigtrain
checkpoints: convert / export-hf / generate / eval take them as they are), resume, metrics.jsonl.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.finetune.config import SFTConfig

INIT_TOKENIZER = "init-tokenizer"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and not (path / "bigtrain.json").is_file() \
        and not (path / "checkpoints").is_dir()


def init_model_config(init: Path):
    """(ModelConfig, kind) of the starting weights: a bigtrain checkpoint (any layout) or an HF Llama dir."""
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


def make_init_fn(init: Path, kind: str, cfg):
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
        return (ckpt / sub) if sub and (ckpt / sub).is_dir() else None
    dest = run_dir / INIT_TOKENIZER
    if (dest / "tokenizer.model").is_file():
        return dest
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        import tempfile

        from bigtrain.convert.hf import import_tokenizer

        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".init-tok-", dir=run_dir) as tmp:
            if not import_tokenizer(init, None, cfg, Path(tmp)):
                return None
            os.replace(Path(tmp) / TOKENIZER_SUBDIR, dest)
        return dest
    deadline = time.time() + 600
    while not (dest / "tokenizer.model").is_file():
        if not (init / "tokenizer.model").is_file() and not (init / "tokenizer.json").is_file():
            return None
        if time.time() > deadline:
            raise BigtrainError(f"{dest}: rank 0 did not import the tokenizer of {init}")
        time.sleep(0.2)
    return dest


def split_config(data: dict[str, Any]) -> tuple[dict[str, Any], SFTConfig]:
    data = copy.deepcopy(data)
    sft = data.pop("sft", None)
    if sft is not None and not isinstance(sft, dict):
        raise BigtrainError("sft: expected a mapping")
    return data, SFTConfig.from_dict(sft or {}, prefix="sft.")


def resolve_finetune(config: str | None, overrides: list[str], init: str, run_dir: str):
    """(JobConfig, SFTConfig, init_fn, tokenizer) for ``bigtrain finetune``."""
    from bigtrain.config.base import apply_overrides, load_yaml
    from bigtrain.config.job import load_job_config, world_size_from_env
    from bigtrain.tokenizer import load_tokenizer

    if not config:
        raise BigtrainError("a config file is required (e.g. bigtrain finetune configs/sft-tiny.yaml --init CKPT "
                            "--run-dir runs/sft)")
    if not init:
        raise BigtrainError("--init CKPT_OR_HF_DIR is required")
    if not run_dir:
        raise BigtrainError("--run-dir is required")
    data = apply_overrides(load_yaml(config), list(overrides))
    base, sft = split_config(data)
    if not sft.path:
        raise BigtrainError("sft.path is required: a .jsonl file of {prompt, response} or {messages} records")
    init_p, run_p = Path(init), Path(run_dir)
    cfg, kind = init_model_config(init_p)
    # The architecture comes from the starting weights; only the context length may be changed.
    given = dict(base.get("model") or {})
    model = cfg.to_dict()
    for k, v in given.items():
        if k == "seq_len":
            model["seq_len"] = v
        elif k in model and v != model[k]:
            raise BigtrainError(f"model.{k}={v!r} differs from the starting weights' {model[k]!r} ({init}); leave "
                                "model.* out of a fine-tuning config (only model.seq_len may change)")
    base["model"] = model
    tok_dir = init_tokenizer_dir(init_p, kind, cfg, run_p)
    if base.get("tokenizer"):
        tok_dir = Path(base["tokenizer"])
    if tok_dir is None:
        raise BigtrainError(f"--init {init}: no tokenizer comes with these weights; set tokenizer=DIR")
    base["tokenizer"] = str(tok_dir)
    job = load_job_config(None, [], base=base)
    job.check_world(world_size_from_env())
    tok = load_tokenizer(tok_dir)
    if tok.vocab_size > job.model.vocab_size:
        raise BigtrainError(f"tokenizer {tok_dir} has {tok.vocab_size} tokens, more than the model's "
                            f"vocabulary of {job.model.vocab_size}")
    if job.train.eval_interval and not (sft.eval_path or sft.eval_fraction):
        raise BigtrainError("train.eval_interval > 0 needs held-out examples: set sft.eval_path or sft.eval_fraction")
    return job, sft, make_init_fn(init_p, kind, cfg), tok


def make_loader_factory(job, sft: SFTConfig, tok):
    from bigtrain.finetune.data import SFTLoader, encode_all, read_jsonl

    examples = read_jsonl(sft.path)
    held = read_jsonl(sft.eval_path) if sft.eval_path else []
    if not sft.eval_path and sft.eval_fraction:
        k = max(1, int(round(len(examples) * sft.eval_fraction)))
        if k >= len(examples):
            raise BigtrainError(f"sft.eval_fraction={sft.eval_fraction} leaves no training examples")
        examples, held = examples[:-k], examples[-k:]
    seq = job.model.seq_len
    train_enc = encode_all(examples, tok, sft, seq, sft.path)
    eval_enc = encode_all(held, tok, sft, seq, sft.eval_path or sft.path) if held else None
    if train_enc.truncated and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {train_enc.truncated} examples cut to model.seq_len+1 = {seq + 1} tokens", flush=True)

    def factory(job_, dp_rank: int, dp_size: int, split: str = "train"):
        t = job_.train
        if split == "train":
            loader = SFTLoader(train_enc, seq, t.micro_batch_size, dp_rank, dp_size, t.seed, sft.pack, tok.pad_id)
        else:
            if eval_enc is None:
                raise BigtrainError("no held-out SFT examples: set sft.eval_path or sft.eval_fraction")
            loader = SFTLoader(eval_enc, seq, t.micro_batch_size, dp_rank, dp_size, t.seed, sft.pack, tok.pad_id,
                               shuffle=False)
        loader.sft_config = sft.to_dict()
        return loader

    return factory, train_enc


def run_finetune(config, overrides, init, run_dir) -> Any:
    from bigtrain.train.trainer import Trainer

    job, sft, init_fn, tok = resolve_finetune(config, overrides, init, run_dir)
    factory, enc = make_loader_factory(job, sft, tok)
    trainer = Trainer(job, run_dir, init_fn=init_fn, loader_factory=factory)
    trainer.setup()
    try:
        if trainer.info.rank == 0:
            n_tok = sum(int((y >= 0).sum()) for y in enc.labels)
            print(f"finetune: {len(enc.inputs)} examples, {n_tok} response tokens, template {sft.template}, "
                  f"{'packed' if sft.pack else 'one example per sequence'}", flush=True)
        trainer.fit()
    finally:
        trainer.close()
    return trainer
