"""Fine-tuning = the pretraining Trainer with starting weights (``init_fn``) and SFT data (``loader_factory``).

Everything else is shared with ``bigtrain train``: parallel layouts, launchers, checkpoints (plain bigtrain
checkpoints: convert / export-hf / generate / eval take them as they are), resume, metrics.jsonl.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.finetune.config import SFTConfig

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
    from bigtrain.train.init import apply_init
    from bigtrain.train.trainer import resolve_tokenizer

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
    base, init_fn = apply_init(base, Path(init), Path(run_dir))
    job = load_job_config(None, [], base=base)
    job.check_world(world_size_from_env())
    tok = resolve_tokenizer(job)
    if tok is None:
        raise BigtrainError(f"--init {init}: no tokenizer comes with these weights; set tokenizer=DIR")
    if job.train.eval_interval and not (sft.eval_path or sft.eval_fraction):
        raise BigtrainError("train.eval_interval > 0 needs held-out examples: set sft.eval_path or sft.eval_fraction")
    return job, sft, init_fn, tok


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
            return SFTLoader(train_enc, seq, t.micro_batch_size, dp_rank, dp_size, t.seed, sft, tok.pad_id)
        if eval_enc is None:
            raise BigtrainError("no held-out SFT examples: set sft.eval_path or sft.eval_fraction")
        return SFTLoader(eval_enc, seq, t.micro_batch_size, dp_rank, dp_size, t.seed, sft, tok.pad_id, shuffle=False)

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
