"""``bigtrain preprocess``."""

from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="tokenize raw text into WebDataset shards (Ray tasks)",
                       description="Tokenize jsonl[.gz|.zst], parquet or txt inputs with a tokenizer "
                                   "into WebDataset tar shards DIR/train/*.tar and DIR/heldout/*.tar plus "
                                   "DIR/manifest.json. Inputs are cut into chunks (byte ranges of jsonl, parquet "
                                   "row groups, compressed files whole) tokenized by Ray tasks on one machine or a "
                                   "cluster; shards are key ranges of about --shard-size bytes. The output is "
                                   "byte-identical for any worker or node count and input order; exact duplicates "
                                   "are removed; a re-run after a crash redoes only unfinished chunks and shards. "
                                   "Plain .txt files are one document each (cut at blank lines past 1 MiB).")
    p.add_argument("--input", nargs="+", required=True, metavar="P", help="input files or directories")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a bigtrain tokenizer directory or .model file, a Hugging Face model or tokenizer directory "
                        "(tokenizer.json), or a bigtrain checkpoint or run directory (its tokenizer)")
    p.add_argument("--eos-token", default=None, metavar="TOKEN",
                   help="token that ends each document (default: the tokenizer's EOS; needed when it has none)")
    p.add_argument("--output", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--shard-size", default=None, metavar="SIZE",
                   help="target bytes per shard file, e.g. 256MB, 1GiB (default 256MiB)")
    p.add_argument("--num-shards", type=int, default=None, metavar="N",
                   help="a fixed number of train shards of equal size instead of --shard-size")
    p.add_argument("--chunk-size", default=None, metavar="SIZE",
                   help="input bytes per tokenize task (default: 1/256 of the input, within 4MiB-256MiB)")
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
    from bigtrain.data.preprocess import PreprocessJob

    t0 = time.time()
    job = PreprocessJob(args.input, args.tokenizer, args.output, shard_size=args.shard_size,
                        num_shards=args.num_shards, heldout_fraction=args.heldout_fraction,
                        text_field=args.text_field, chunk_size=args.chunk_size, workers=args.workers,
                        ray_address=args.ray_address, eos_token=args.eos_token, quiet=args.quiet)
    m = job.run()
    if not args.quiet:
        r = job.report
        tokens = sum(s["tokens"] for s in m["splits"].values())
        el = time.time() - t0
        print(f"preprocess: {r['chunks']} chunks of up to {r['chunk_bytes']:,} bytes ({r['chunks_reused']} reused), "
              f"{r['ray_objects']} Ray objects ({r['ray_objects'] / max(1, r['chunks']):.2f} per chunk)", flush=True)
        print(f"preprocess: wrote {args.output} ({tokens:,} tokens) in {el:.1f}s ({tokens / el:,.0f} tokens/s)",
              flush=True)
    return 0
