"""Benchmark the data pipeline: preprocessing tokens/s per core (1 and 2 workers) and loader tokens/s.

    PYTHONPATH=. python tools/bench_data.py [--copies 3] [--seq-len 2048] [--micro-batch-size 8]

Preprocessing runs on the bundled corpus (data/python-docs.jsonl.gz) repeated ``--copies`` times (each
copy's documents are made distinct so deduplication keeps them), with a tokenizer trained on it. Each
worker count gets its own local Ray; the time counted is the pipeline inside Ray (read, tokenize,
write), not Ray's start-up. "Per core" divides by the worker count. The loader is measured through
``build_loader`` (what the trainer calls): windows per second × seq_len, one process, warm cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--loader-batches", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import ray

    from bigtrain.config.job import load_job_config
    from bigtrain.data.build import build_loader
    from bigtrain.data.preprocess import init_local_ray, preprocess
    from bigtrain.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    corpus = REPO / "data" / "python-docs.jsonl.gz"
    docs = [json.loads(line)["text"] for line in gzip.open(corpus, "rt")]
    inp = tmp / "input.jsonl"
    with open(inp, "w") as f:
        for c in range(args.copies):
            for d in docs:
                f.write(json.dumps({"text": f"[{c}] {d}"}) + "\n")
    mb = inp.stat().st_size / 1e6
    t0 = time.time()
    train_tokenizer([corpus], args.vocab_size, tmp / "tok")
    print(f"tokenizer: vocab {args.vocab_size} trained on {corpus.name} in {time.time() - t0:.1f}s")

    out = None
    for w in args.workers:
        out = tmp / f"ds-w{w}"
        init_local_ray(w)
        try:
            t0 = time.time()
            m = preprocess([str(inp)], str(tmp / "tok"), str(out), num_shards=8, heldout_fraction=0.01,
                           workers=w, quiet=True)
            dt = time.time() - t0
        finally:
            ray.shutdown()
        tokens = sum(s["tokens"] for s in m["splits"].values())
        print(f"preprocess: workers={w}: {mb:.1f} MB, {m['totals']['documents_written']:,} docs, {tokens:,} tokens "
              f"in {dt:.2f}s = {tokens / dt:,.0f} tokens/s = {tokens / dt / w:,.0f} tokens/s per core")

    job = load_job_config(None, [f"data.path=[{out}]", f"model.seq_len={args.seq_len}",
                                 f"model.vocab_size={args.vocab_size}",
                                 f"train.micro_batch_size={args.micro_batch_size}",
                                 f"train.global_batch_size={args.micro_batch_size}"])
    loader = build_loader(job, 0, 1)
    for _ in range(10):
        loader.next_batch()
    t0 = time.time()
    for _ in range(args.loader_batches):
        loader.next_batch()
    dt = time.time() - t0
    tokens = args.loader_batches * args.micro_batch_size * args.seq_len
    print(f"loader: seq_len={args.seq_len} micro_batch={args.micro_batch_size}: {tokens:,} tokens in {dt:.2f}s "
          f"= {tokens / dt / 1e6:,.1f} M tokens/s per process")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
