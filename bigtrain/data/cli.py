"""``bigtrain preprocess``."""

from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="tokenize raw text into WebDataset shards (Ray tasks)",
                       description="Tokenize jsonl[.gz|.zst], parquet or txt inputs with a tokenizer "
                                   "into WebDataset tar shards DIR/train/*.tar and DIR/heldout/*.tar plus "
                                   "DIR/manifest.json. The output is byte-identical for any worker count and "
                                   "input order; a re-run keeps verified shards. Plain .txt files are one "
                                   "document each (cut at blank lines past 1 MiB).")
    p.add_argument("--input", nargs="+", required=True, metavar="P", help="input files or directories")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a bigtrain tokenizer directory or .model file, a Hugging Face model or tokenizer directory "
                        "(tokenizer.json), or a bigtrain checkpoint or run directory (its tokenizer)")
    p.add_argument("--eos-token", default=None, metavar="TOKEN",
                   help="token that ends each document (default: the tokenizer's EOS; needed when it has none)")
    p.add_argument("--output", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--num-shards", type=int, default=8, metavar="N", help="train shards (default 8)")
    p.add_argument("--heldout-fraction", type=float, default=0.01, metavar="F",
                   help="fraction of documents held out, chosen by document hash (default 0.01)")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column with the text")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray (default: all) and tokenize tasks in flight")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="use an existing Ray cluster (e.g. auto) instead of starting a local one")
    p.add_argument("--quiet", action="store_true", help="no progress lines or summary")
    p.set_defaults(func=_preprocess)


def _preprocess(args) -> int:
    from bigtrain.data.preprocess import preprocess

    t0 = time.time()
    m = preprocess(args.input, args.tokenizer, args.output, num_shards=args.num_shards,
                   heldout_fraction=args.heldout_fraction, text_field=args.text_field, workers=args.workers,
                   ray_address=args.ray_address, quiet=args.quiet, eos_token=args.eos_token)
    if not args.quiet:
        tokens = sum(s["tokens"] for s in m["splits"].values())
        print(f"preprocess: wrote {args.output} ({tokens:,} tokens) in {time.time() - t0:.1f}s", flush=True)
    return 0
