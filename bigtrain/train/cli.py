"""``bigtrain train``: run (or resume) a training job."""

from __future__ import annotations

from pathlib import Path

from bigtrain.errors import BigtrainError

EXIT_PREEMPTED = 143


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (resumes when --run-dir holds a checkpoint)",
                       description="Train a model from a YAML recipe. Any config key can be overridden as "
                       "key=value, e.g. parallel.tp=2 train.max_steps=100. Under torchrun or the deepspeed "
                       "launcher, data-parallel size = world size / (tp × pp).")
    p.add_argument("config", nargs="?", help="YAML recipe, e.g. configs/tiny-cpu.yaml (optional with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--run-dir", help="output directory: metrics.jsonl, checkpoints/, tensorboard/, loss.png")
    p.add_argument("--resume", metavar="RUN", help="resume RUN with the config saved in its newest checkpoint")
    p.add_argument("--init", metavar="CKPT_OR_HF_DIR",
                   help="start from these weights (continued pretraining): a bigtrain checkpoint of any layout, e.g. "
                   "from `bigtrain import-hf`, or a Hugging Face model directory; the architecture and tokenizer come "
                   "with them (the recipe's model section is ignored but for seq_len; a checkpoint already in --run-dir wins)")
    p.set_defaults(func=run)


def resolve_job(args):
    """(JobConfig, run dir, init_fn or None)."""
    from bigtrain.checkpoint.manager import latest_checkpoint, read_meta
    from bigtrain.config.base import apply_overrides, load_yaml
    from bigtrain.config.job import load_job_config, world_size_from_env

    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `bigtrain train --resume RUN key=value`
        config = None
    if args.resume:
        if args.run_dir and Path(args.run_dir) != Path(args.resume):
            raise BigtrainError("give either --resume RUN or --run-dir DIR, not two different directories")
        run_dir = Path(args.resume)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise BigtrainError(f"--resume {run_dir}: no complete checkpoint under {run_dir}/checkpoints")
        job = load_job_config(config, overrides, base=None if config else read_meta(ckpt)["config"])
        init_fn = None
        if job.lora.enabled:
            from bigtrain.train.init import recorded_lora_base

            init_fn = recorded_lora_base(run_dir, job.model)
    else:
        if not config:
            raise BigtrainError("a config file is required (e.g. bigtrain train configs/tiny-cpu.yaml --run-dir runs/tiny)")
        if not args.run_dir:
            raise BigtrainError("--run-dir is required")
        run_dir = Path(args.run_dir)
        init_fn = None
        if args.init:
            from bigtrain.train.init import apply_init

            # The weights fix the architecture: of the recipe's model section only seq_len is kept, so one recipe
            # serves any starting model; model.* given on the command line must agree with the weights.
            data = load_yaml(config)
            recipe_model = data.pop("model", None) or {}
            data["model"] = {"seq_len": recipe_model["seq_len"]} if "seq_len" in recipe_model else {}
            base, init_fn = apply_init(apply_overrides(data, overrides), Path(args.init), run_dir)
            job = load_job_config(None, [], base=base)
        else:
            job = load_job_config(config, overrides)
    job.check_world(world_size_from_env())
    return job, run_dir, init_fn


def run(args) -> int:
    job, run_dir, init_fn = resolve_job(args)
    from bigtrain.train.trainer import Trainer

    trainer = Trainer(job, run_dir, init_fn=init_fn)
    trainer.setup()
    try:
        trainer.fit()
    finally:
        trainer.close()
    if trainer.stop_reason:
        raise BigtrainError(trainer.stop_reason)
    # 143 (= killed by SIGTERM) tells schedulers the job is unfinished; it resumes from the saved step.
    return EXIT_PREEMPTED if trainer.stop_signal else 0
