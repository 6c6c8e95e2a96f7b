"""``bigtrain eval``: held-out loss, perplexity and bits-per-byte of a checkpoint."""

from __future__ import annotations

from pathlib import Path

from bigtrain.errors import BigtrainError


def register(sub) -> None:
    p = sub.add_parser("eval", help="held-out loss, perplexity and bits-per-byte of a checkpoint",
                       description="Evaluate a checkpoint (run dir, checkpoint dir of any TP/PP layout, or a "
                       "consolidated one) on a preprocessed dataset's split, in one process. The split is cut into "
                       "windows of model.seq_len+1 tokens in stream order (as in training's held-out evaluation). "
                       "Writes JSON (--output) and prints a table. For lm-evaluation-harness tasks run "
                       "`python -m bigtrain.eval.harness --model bigtrain --model_args checkpoint=CKPT --tasks TASKS` "
                       "(lm_eval with bigtrain's model registered; see bigtrain/eval/harness.py), or `lm_eval --model hf` "
                       "on a `bigtrain export-hf` output.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="run dir, checkpoint dir or consolidated dir")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset directory from `bigtrain preprocess`")
    p.add_argument("--split", default="heldout", choices=["heldout", "train"], help="split to evaluate (default heldout)")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N",
                   help="evaluate at most N target tokens (whole windows; default: the whole split)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--seq-len", type=int, default=0, help="window length (default: the checkpoint's model.seq_len)")
    p.add_argument("--output", metavar="FILE", help="JSON result file (default: CKPT_DIR/eval-<split>.json)")
    p.set_defaults(func=run_eval)


def format_table(result: dict) -> str:
    rows = [("checkpoint", result["checkpoint"]), ("data", result["data"]), ("split", result["split"]),
            ("windows", str(result["windows"])), ("tokens", str(result["tokens"])),
            ("bytes", str(result.get("bytes", "-"))), ("loss", f"{result['loss']:.6f}"),
            ("ppl", f"{result['ppl']:.4f}"),
            ("bpb", f"{result['bpb']:.6f}" if result.get("bpb") is not None else "-")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_eval(args) -> int:
    if args.max_tokens < 0:
        raise BigtrainError(f"--max-tokens {args.max_tokens}: must not be negative")
    if args.batch_size <= 0:
        raise BigtrainError(f"--batch-size {args.batch_size}: must be positive")
    if args.seq_len < 0:
        raise BigtrainError(f"--seq-len {args.seq_len}: must be positive")
    if not Path(args.checkpoint).exists():
        raise BigtrainError(f"--checkpoint {args.checkpoint}: no such checkpoint directory")
    if not Path(args.data).is_dir():
        raise BigtrainError(f"--data {args.data}: no such dataset directory")
    from bigtrain.eval.heldout import ByteCounter, evaluate_windows, heldout_source
    from bigtrain.generate.inference import load_model_for_inference
    from bigtrain.checkpoint.manager import resolve_checkpoint
    from bigtrain.data.shards import load_manifest
    from bigtrain.io import atomic_write_json

    model, tok, job = load_model_for_inference(args.checkpoint)
    seq_len = args.seq_len or job.model.seq_len
    source = heldout_source(args.data, args.split, seq_len, job.model.vocab_size)
    data_tok = load_manifest(args.data).get("tokenizer", {})
    counter = None
    if tok is not None:
        if data_tok.get("sha256") and data_tok["sha256"] != tok.sha256:
            raise BigtrainError(f"--data {args.data} was tokenized with another tokenizer than the checkpoint's "
                                f"({data_tok.get('path')})")
        counter = ByteCounter(tok)
    n = len(source)
    if args.max_tokens:
        n = min(n, args.max_tokens // seq_len)
        if n < 1:
            raise BigtrainError(f"--max-tokens {args.max_tokens}: fewer than one window of {seq_len} tokens")
    result = evaluate_windows(model, (source.window(i) for i in range(n)), counter, args.batch_size)
    ckpt = resolve_checkpoint(Path(args.checkpoint))
    result = {"checkpoint": str(ckpt), "data": str(args.data), "split": args.split, "windows": n,
              "seq_len": seq_len, **result}
    if counter is None:
        result["bpb"] = None
        result["note"] = "no tokenizer in the checkpoint: bits-per-byte needs one"
    out = Path(args.output) if args.output else ckpt / f"eval-{args.split}.json"
    atomic_write_json(out, result)
    print(format_table(result))
    print(f"wrote {out}", flush=True)
    return 0
