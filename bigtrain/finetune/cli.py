"""``bigtrain finetune``: supervised fine-tuning (prompt tokens carry no loss) from a checkpoint or HF model."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("finetune", help="supervised fine-tuning from a checkpoint or Hugging Face model directory",
                       description="Fine-tune on a jsonl of {prompt, response} or {messages: [{role, content}]} "
                       "records (sft.path); only response tokens carry loss; examples are packed without attention "
                       "across examples (sft.pack). Config: the sections of a training recipe (parallel, train, "
                       "checkpoint; model comes from --init, only model.seq_len may change) plus sft "
                       "(see configs/sft-tiny.yaml). Same launchers, layouts, checkpoints and resume as "
                       "`bigtrain train`: rerunning with the same --run-dir resumes. lora.rank=R (with lora.alpha, "
                       "lora.dropout, lora.targets) trains LoRA adapters on the frozen --init weights instead of "
                       "every weight; export them with `bigtrain export-hf --merge` or `--adapter`.")
    p.add_argument("config", help="YAML recipe with an sft section, e.g. configs/sft-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sft.path=data.jsonl")
    p.add_argument("--init", required=True, metavar="CKPT_OR_HF_DIR",
                   help="starting weights: a bigtrain run/checkpoint dir (any layout, or consolidated) or a "
                   "Hugging Face model directory (Llama, Mistral, Qwen2, Qwen3)")
    p.add_argument("--run-dir", required=True, help="output directory (resumes when it holds a checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from bigtrain.errors import BigtrainError
    from bigtrain.finetune.run import run_finetune
    from bigtrain.train.cli import EXIT_PREEMPTED

    trainer = run_finetune(args.config, args.overrides, args.init, args.run_dir)
    if trainer.stop_reason:
        raise BigtrainError(trainer.stop_reason)
    return EXIT_PREEMPTED if trainer.stop_signal else 0
