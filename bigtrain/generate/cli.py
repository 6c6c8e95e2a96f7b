"""``bigtrain generate``: sample from a checkpoint of any layout with a KV cache."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint (any layout) with a KV cache",
                       description="Load a checkpoint (any TP/PP layout, or consolidated) into one process and "
                                   "continue a prompt: greedy with --temperature 0, else sampling with top-k/top-p.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    p.add_argument("--prompt", required=True, help="text to continue (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true",
                   help="render the prompt as a user turn with the tokenizer's own chat template (and its "
                   "generation prompt); stop at the EOS ids of the model's generation_config.json too")
    p.add_argument("--system", help="with --chat: a system message before the user's")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else softmax temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token to the prompt")
    p.add_argument("--ids", action="store_true", help="also print the generated token ids")
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from bigtrain.convert.cli import quiet_libraries

    quiet_libraries()
    from bigtrain.errors import BigtrainError

    if args.max_new_tokens < 1:
        raise BigtrainError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise BigtrainError(f"--temperature={args.temperature} must not be negative")
    if args.top_k < 0:
        raise BigtrainError(f"--top-k={args.top_k} must not be negative")
    if not 0 < args.top_p <= 1:
        raise BigtrainError(f"--top-p={args.top_p} must be in (0, 1]")
    from bigtrain.generate.inference import load_model_for_inference
    from bigtrain.generate.sampling import generate

    model, tok, job = load_model_for_inference(args.checkpoint)
    if tok is None:
        raise BigtrainError(f"{args.checkpoint}: the checkpoint has no tokenizer/ to encode the prompt with")
    stop = {tok.eos_id} - {-1}
    if args.chat:
        if not tok.chat_template:
            raise BigtrainError(f"--chat: the tokenizer of {args.checkpoint} has no chat template")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": args.prompt}]
        shown = tok.apply_chat_template(messages, add_generation_prompt=True)
        prompt = tok.encode(shown)  # the template places BOS itself
        stop |= generation_eos_ids(tok)
    else:
        shown = args.prompt
        prompt = tok.encode(args.prompt, bos=not args.no_bos)
    if not prompt:
        raise BigtrainError("--prompt encodes to no tokens (pass text, or drop --no-bos)")
    out = generate(model, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_id=stop,
                   vocab_limit=tok.vocab_size)
    text = tok.decode([i for i in out if i not in stop])
    print(shown + text, flush=True)
    if args.ids:
        print("ids:", " ".join(map(str, out)), flush=True)
    return 0


def generation_eos_ids(tok) -> set[int]:
    """EOS ids of the generation_config.json imported with the model (Llama 3 lists several end-of-turn ids)."""
    import json

    f = tok.generation_config_file()
    try:
        ids = json.loads(f.read_text()).get("eos_token_id") if f is not None else None
    except ValueError:
        return set()
    return {int(i) for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int)}
