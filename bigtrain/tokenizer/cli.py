"""``bigtrain tokenizer train``."""

from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer",
                       description="Tokenizer commands.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser("train", help="train a sentencepiece tokenizer (byte fallback) on raw text",
                        description="Train a sentencepiece tokenizer with byte fallback on jsonl[.gz|.zst], "
                                    "parquet or txt inputs; writes DIR/tokenizer.model and DIR/tokenizer.json.")
    t.add_argument("--input", nargs="+", required=True, metavar="P", help="input files or directories")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size")
    t.add_argument("--output", required=True, metavar="DIR", help="tokenizer directory to write")
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="default: bpe")
    t.add_argument("--text-field", default="text", help="JSON field / parquet column holding the text")
    t.add_argument("--max-sentences", type=int, default=1_000_000,
                   help="lines kept for training by reservoir sampling (default 1,000,000)")
    t.add_argument("--max-input-bytes", type=int, default=1 << 30,
                   help="text read from the inputs at most, split evenly over them (default 1 GiB)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train(args) -> int:
    from bigtrain.tokenizer.train import train_tokenizer

    t0 = time.time()
    tok = train_tokenizer(args.input, args.vocab_size, args.output, model_type=args.model_type,
                          text_field=args.text_field, max_sentences=args.max_sentences,
                          max_input_bytes=args.max_input_bytes, seed=args.seed, verbose=False)
    print(f"tokenizer: wrote {args.output} ({tok.meta.get('model_type')}, vocab {tok.vocab_size}, "
          f"bos={tok.bos_id} eos={tok.eos_id} pad={tok.pad_id}, sha256 {tok.sha256[:12]}) "
          f"in {time.time() - t0:.1f}s", flush=True)
    return 0
