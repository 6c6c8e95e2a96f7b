"""``bigtrain convert``, ``bigtrain export-hf`` and ``bigtrain import-hf``."""

from __future__ import annotations

import argparse


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def register(sub) -> None:
    p = sub.add_parser("convert", help="reshard a checkpoint to another TP/PP/DP layout, or consolidate it",
                       description="Re-partition a checkpoint (model and optimizer state) to another layout, or "
                                   "with --to consolidated write unsharded fp32 safetensors plus bigtrain.json.")
    p.add_argument("--input", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    p.add_argument("--output", required=True, help="new checkpoint directory (written atomically)")
    p.add_argument("--tp", type=_positive, help="target tensor-parallel size (default: the input's)")
    p.add_argument("--pp", type=_positive, help="target pipeline stages (default: the input's)")
    p.add_argument("--dp", type=_positive, default=1, help="target data-parallel size (default 1)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="target ZeRO stage (default: the input's)")
    p.add_argument("--to", choices=["consolidated"], help="write unsharded safetensors instead of a DeepSpeed layout")
    p.add_argument("--no-optimizer", action="store_true", help="do not carry optimizer state")
    p.add_argument("--with-optimizer", action="store_true", help="with --to consolidated: also write optimizer.safetensors")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_convert)

    p = sub.add_parser("export-hf", help="export a checkpoint as a Hugging Face model directory (its family's class)",
                       description="Write a Hugging Face directory of the model family's class (LlamaForCausalLM, "
                                   "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) with the tokenizer, then "
                                   "load it with transformers and compare logits with bigtrain's model on a fixed "
                                   "batch, and the tokenizer's ids on documents of the training data and a built-in "
                                   "sample; fail above tolerance or on any differing id.")
    p.add_argument("--input", required=True, help="checkpoint (any layout, or consolidated) or run directory")
    p.add_argument("--output", required=True, help="Hugging Face directory to write (atomically)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weight dtype (default fp32)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's copy)")
    p.add_argument("--max-shard-size", type=_positive, default=2 * 1024**3, help="bytes per safetensors shard")
    p.add_argument("--no-check", action="store_true", help="skip the transformers logits check")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    lora = p.add_mutually_exclusive_group()
    lora.add_argument("--merge", action="store_true",
                      help="LoRA checkpoint: write the base with the adapters merged in (checked against bigtrain's "
                           "LoRA model)")
    lora.add_argument("--adapter", action="store_true",
                      help="LoRA checkpoint: write a PEFT adapter (adapter_config.json, adapter_model.safetensors) for "
                           "the base model (checked by loading it with peft onto the base)")
    p.set_defaults(func=run_export)

    p = sub.add_parser("import-hf", help="import a Hugging Face model (Llama, Mistral, Qwen2, Qwen3) as a checkpoint",
                       description="Read a Hugging Face model directory (model_type llama, mistral, qwen2 or qwen3) "
                                   "and write a bigtrain checkpoint in the given layout, with the tokenizer files, "
                                   "chat template and generation_config.json it comes with.")
    p.add_argument("--input", required=True, help="Hugging Face model directory")
    p.add_argument("--output", required=True, help="checkpoint directory to write (atomically)")
    p.add_argument("--tp", type=_positive, default=1)
    p.add_argument("--pp", type=_positive, default=1)
    p.add_argument("--dp", type=_positive, default=1)
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3])
    p.add_argument("--tokenizer", help="tokenizer directory to carry instead of the model directory's own")
    p.add_argument("--config", help="YAML recipe for the non-model sections (train, data, ...)")
    p.add_argument("--to", choices=["consolidated"], help="write a consolidated checkpoint instead")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_import)


def quiet_libraries() -> None:
    """megatron-core warns at import that Apex / Transformer Engine are absent; bigtrain needs neither."""
    import os
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("DS_ACCELERATOR", "cpu") if not _has_cuda() else None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_convert(args) -> int:
    quiet_libraries()
    from bigtrain.convert.api import convert

    with_opt = False if args.no_optimizer else (True if args.with_optimizer else None)
    new = convert(args.input, args.output, tp=args.tp, pp=args.pp, dp=args.dp, zero_stage=args.zero_stage,
                  to=args.to, with_optimizer=with_opt, force=args.force)
    lay = new.get("layout", {})
    what = "consolidated" if args.to else f"tp={lay.get('tp')} pp={lay.get('pp')} dp={lay.get('dp')}"
    extra = " with optimizer state" if new.get("optimizer_carried") or new.get("optimizer_state") else ""
    print(f"convert: wrote {args.output} ({what}{extra}) at step {new.get('step')}", flush=True)
    return 0


def run_export(args) -> int:
    quiet_libraries()
    from bigtrain.convert.export import export_hf

    lora_as = "merge" if args.merge else "adapter" if args.adapter else None
    rep = export_hf(args.input, args.output, dtype=args.dtype, tokenizer=args.tokenizer,
                    max_shard_size=args.max_shard_size, check=not args.no_check, force=args.force, lora_as=lora_as)
    diff = rep.get("max_logit_diff")
    if lora_as == "adapter":
        check = f"; peft on the base matches bigtrain's LoRA model (max |diff| {diff:.2e})" if diff is not None else ""
        print(f"export-hf: wrote PEFT adapter {args.output} (rank {rep['rank']}, {', '.join(rep['targets'])}){check}",
              flush=True)
        if rep.get("peft_base_model") is None:
            print(f"note: the base is a bigtrain checkpoint ({rep['base']['path']}); export it with bigtrain export-hf "
                  "and set base_model_name_or_path in adapter_config.json to that directory", flush=True)
        return 0
    check = f"; logits match transformers (max |diff| {diff:.2e})" if diff is not None else ""
    what = f"{args.dtype}, LoRA merged" if lora_as == "merge" else args.dtype
    print(f"export-hf: wrote {args.output} ({what}){check}", flush=True)
    return 0


def run_import(args) -> int:
    quiet_libraries()
    from bigtrain.convert.hf import import_hf

    base = None
    if args.config:
        from bigtrain.config.job import load_job_config

        base = load_job_config(args.config).to_dict()
    import_hf(args.input, args.output, tp=args.tp, pp=args.pp, dp=args.dp, zero_stage=args.zero_stage,
              tokenizer=args.tokenizer, to=args.to, base_config=base, force=args.force)
    print(f"import-hf: wrote {args.output} (tp={args.tp} pp={args.pp})", flush=True)
    return 0
