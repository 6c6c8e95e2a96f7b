"""Benchmark the data pipeline: preprocessing tokens/s per core (1 and 2 workers) and loader tokens/s.

    PYTHONPATH=. python tools/bench_data.py [--copies 10] [--repeat 2] [--seq-len 2048] [--micro-batch-size 8]

Preprocessing runs on the bundled corpus (data/python-docs.jsonl.gz) repeated ``--copies`` times (each
copy's documents are made distinct so deduplication keeps them), with a tokenizer trained on it. Each
worker count gets its own local Ray; the time counted is the pipeline inside Ray (read, tokenize,
write), not Ray's start-up, and (unless --no-warmup) not the start-up of Ray's worker processes either:
an untimed warm-up run on a different input with enough batches for every worker first starts them
(python, imports, sentencepiece), which otherwise costs ~2 s per worker on a loaded 2-core machine, is
paid by the timed run's first batches, and grows with the worker count, not the data (a Ray timeline
of a 2-worker run showed the second tokenize worker idle for its first 2.5 s of 10). Each worker count is timed ``--repeat`` times (fresh output each time) and the
fastest run counts. "Per core" divides by the worker count; scaling efficiency = per-core tokens/s
at N workers / per-core tokens/s at 1 (target ≥ 0.9). The load average is printed with each run: with
other work on the machine, N workers cannot get N cores and the ratio says nothing. The loader is measured through
``build_loader`` (what the trainer calls): windows per second × seq_len, one process, warm cache.

Large shards (``--large-shard-gb``, default 1; 0 skips; ``--large-only`` runs only this part): a dataset of
``--large-shards`` shards of that size (random uint16 tokens in documents of 1–20k tokens, written with
``ShardWriter``) is read for one epoch at seq_len 4096 and 8192 (``--large-seq-lens``), each run in its own
process and through ``DistributedWindowLoader``: by ``ShardWindowSource`` (memory-mapped shards, windows
copied out of the documents they span) and, for reference, by the source as it was before (every shard
switch reads, hashes and decodes the whole shard into an LRU cache of decoded shards), reimplemented here.
It prints tokens/s over the epoch (which includes opening and sha256-checking every shard once), peak RSS
of each process, and what a shard's first open costs: the streamed sha256 check, the mapped reader's
index, the old whole-shard decode.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bigtrain.data.shard_source import ShardWindowSource  # noqa: E402
from bigtrain.errors import BigtrainError  # noqa: E402


def _ray_cpu_seconds() -> float:
    """User + system CPU seconds used so far by Ray's worker processes: the live ones (ray::… /
    default_worker.py) under this process, plus those that exited, which the raylet (their parent) has reaped."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):  # this driver's own Ray, not another on the machine
        try:
            cmd = " ".join(p.cmdline())
            name = p.name()
            if name.startswith("ray::") or "default_worker.py" in cmd:
                t = p.cpu_times()
                total += t.user + t.system
            elif name == "raylet" or cmd.split(" ")[0].endswith("/raylet"):  # reaped workers
                t = p.cpu_times()
                total += t.children_user + t.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


# --- large shards ---------------------------------------------------------------------------------

def _decode_whole_shard(path: Path, sha256: str | None) -> np.ndarray:
    """REFERENCE ONLY (the reader before the mapped one): read the whole file, hash it in memory, and
    concatenate every document into one decoded array."""
    buf = path.read_bytes()
    if sha256 is not None and hashlib.sha256(buf).hexdigest() != sha256:
        raise BigtrainError(f"{path}: shard's sha256 is not the one in the manifest")
    mv, pieces, dtype, pos = memoryview(buf), [], None, 0
    while pos + 512 <= len(buf) and buf[pos:pos + 512] != b"\0" * 512:
        size = int(buf[pos + 124:pos + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        start, pos = pos + 512, pos + 512 + (size + 511) // 512 * 512
        hlen = int.from_bytes(buf[start + 8:start + 10], "little")
        if dtype is None:
            dtype = np.dtype(ast.literal_eval(buf[start + 10:start + 10 + hlen].decode("latin1"))["descr"])
        pieces.append(np.frombuffer(mv[start + 10 + hlen:start + size], dtype=dtype))
    return np.concatenate(pieces)


class WholeShardDecodeSource(ShardWindowSource):
    """REFERENCE ONLY: ShardWindowSource as it was before the mapped reader. A shard switch decodes the
    whole shard (:func:`_decode_whole_shard`) into an LRU cache of decoded shards (at least 4, as many as a
    shuffle block spans within 2^30 decoded tokens); a window is a slice of a decoded shard."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        span = (max(self.shuffle_buffer, 1) + 1) * self.seq_len
        need = int(np.ceil(span / max(1.0, float(self.shard_tokens.min())))) + 2
        budget = max(1, int((1 << 30) // max(1, int(self.shard_tokens.max()))))
        self.cache_shards = min(len(self.paths), max(4, min(need, budget)))
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()

    def _decoded_shard(self, i: int) -> np.ndarray:
        arr = self._decoded.get(i)
        if arr is None:
            arr = _decode_whole_shard(self.paths[i], None if i in self._verified else self.sha256[i])
            self._verified.add(i)
            self._decoded[i] = arr
            if len(self._decoded) > self.cache_shards:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(i)
        return arr

    def window(self, index: int) -> np.ndarray:
        epoch, w = self._position(index)
        order, starts = self._epoch(epoch)
        start = w * self.seq_len
        j = int(np.searchsorted(starts, start, side="right")) - 1
        off = start - int(starts[j])
        arr = self._decoded_shard(int(order[j]))
        if off + self.seq_len + 1 <= len(arr):
            return arr[off:off + self.seq_len + 1].astype(np.int64)
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        filled = 0
        while filled < len(out):
            arr = self._decoded_shard(int(order[j]))
            take = min(len(arr) - off, len(out) - filled)
            out[filled:filled + take] = arr[off:off + take]
            filled, j, off = filled + take, j + 1, 0
        return out


def _write_large_dataset(root: Path, shard_gb: float, n_shards: int, vocab: int = 32000) -> list[dict]:
    """``n_shards`` shards of ``shard_gb`` GB of random uint16 tokens in documents of 1–20k tokens, and a
    manifest; returns the manifest's shard records."""
    from bigtrain.data.shards import FORMAT, ShardWriter

    rng = np.random.default_rng(0)
    pool = rng.integers(0, vocab, 1 << 26, dtype=np.uint16)  # documents are slices of one pool: quick to make
    shards = []
    for s in range(n_shards):
        rel = f"train/shard-{s:05d}.tar"
        with ShardWriter(root / rel) as w:
            while w.bytes < shard_gb * 1e9:
                n, off = int(rng.integers(1, 20_001)), int(rng.integers(0, len(pool) - 20_000))
                w.add(f"{s:08x}{w.samples:024x}", pool[off:off + n])
            sha = w.close()
        shards.append({"path": rel, "split": "train", "samples": w.samples, "bytes": w.bytes, "tokens": w.tokens,
                       "sha256": sha})
    manifest = {"format": FORMAT, "tokenizer": {"vocab_size": vocab, "sha256": "bench"}, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return shards


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _loader_child(impl: str, directory: str, seq_len: int, micro_batch: int) -> None:
    """One epoch through the loader in this (fresh) process; prints a JSON line of the results."""
    from bigtrain.data.loader import DistributedWindowLoader

    rss0 = _peak_rss_mb()
    cls = ShardWindowSource if impl == "mapped" else WholeShardDecodeSource
    loader = DistributedWindowLoader(cls(directory, seq_len, seed=0, shuffle_buffer=1024), micro_batch)
    batches = len(loader.source) // micro_batch
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens": batches * micro_batch * seq_len, "seconds": dt, "rss0_mb": rss0,
                      "peak_rss_mb": _peak_rss_mb()}))


def bench_large_shards(args) -> None:
    from bigtrain.data.shards import open_shard

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_large_"))
    try:
        t0 = time.time()
        shards = _write_large_dataset(tmp, args.large_shard_gb, args.large_shards)
        first = shards[0]
        print(f"large shards: {len(shards)} shards of {first['bytes'] / 1e9:.2f} GB ({first['tokens']:,} tokens in "
              f"{first['samples']:,} documents of 1-20k tokens each) written in {time.time() - t0:.1f}s")
        path = tmp / first["path"]
        t0 = time.perf_counter()
        open_shard(path, first["sha256"])
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        open_shard(path)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        _decode_whole_shard(path, None)
        t_decode = time.perf_counter() - t0
        t_hash = max(t_first - t_open, 1e-9)
        print(f"opening one shard: first open in a process {t_first:.2f}s = sha256 check (streamed through the map) "
              f"{t_hash:.2f}s ({first['bytes'] / 1e6 / t_hash:,.0f} MB/s) + index {t_open:.2f}s; later opens "
              f"{t_open:.2f}s; the old reader decoded the whole shard on every switch: {t_decode:.2f}s + its sha256 "
              "on the first")
        print(f"loader over one epoch (each shard opened and sha256-checked once), micro_batch "
              f"{args.micro_batch_size}, one fresh process per run:")
        print(f"{'seq_len':>7}  {'reader':<36} {'M tokens/s':>10} {'peak RSS MB':>11} {'(at start)':>10}")
        for seq_len in args.large_seq_lens:
            got = {}
            for impl, label in (("mapped", "memory-mapped (the loader)"),
                                ("whole", "whole-shard decode (reference, old)")):
                out = subprocess.run([sys.executable, __file__, "--large-child", impl, str(tmp), str(seq_len),
                                      str(args.micro_batch_size)], check=True, capture_output=True, text=True).stdout
                r = got[impl] = json.loads(out.strip().splitlines()[-1])
                print(f"{seq_len:>7}  {label:<36} {r['tokens'] / r['seconds'] / 1e6:>10,.1f} "
                      f"{r['peak_rss_mb']:>11,.0f} {r['rss0_mb']:>10,.0f}")
            m, w = got["mapped"], got["whole"]
            print(f"{seq_len:>7}  mapped / reference: {w['seconds'] / m['seconds']:.2f}x tokens/s, "
                  f"{m['peak_rss_mb'] / w['peak_rss_mb']:.2f}x peak RSS")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--large-child"]:
        impl, directory, seq_len, micro_batch = sys.argv[2:6]
        return _loader_child(impl, directory, int(seq_len), int(micro_batch))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--loader-batches", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--large-shard-gb", type=float, default=1.0, help="shard size of the large-shard case (0: skip it)")
    ap.add_argument("--large-shards", type=int, default=2)
    ap.add_argument("--large-seq-lens", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--large-only", action="store_true", help="only the large-shard case")
    args = ap.parse_args()
    if not args.large_only:
        bench_preprocess_and_loader(args)
    if args.large_shard_gb > 0:
        bench_large_shards(args)


def bench_preprocess_and_loader(args) -> None:

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
            f.writelines(json.dumps({"text": f"[{c}] {d}"}) + "\n" for d in docs)
    mb = inp.stat().st_size / 1e6
    t0 = time.time()
    train_tokenizer([corpus], args.vocab_size, tmp / "tok")
    print(f"tokenizer: vocab {args.vocab_size} trained on {corpus.name} in {time.time() - t0:.1f}s")

    warm = tmp / "warmup.jsonl"
    with open(warm, "w") as f:
        # One copy of the corpus (~9 MB, ~9 batches): enough tasks that every tokenize worker process is
        # started and has loaded sentencepiece; a smaller warm-up starts only one, and the timed run then
        # pays the second worker's start-up (~2 s on a loaded 2-core machine) on its critical path.
        f.writelines(json.dumps({"text": f"[warm-up] {d}"}) + "\n" for d in docs)
    out = None
    per_core = {}
    for w in args.workers:
        init_local_ray(w)
        try:
            if not args.no_warmup:
                t0 = time.time()
                preprocess([str(warm)], str(tmp / "tok"), str(tmp / f"warm-w{w}"), num_shards=8,
                           heldout_fraction=0.01, workers=w, quiet=True)
                print(f"preprocess: workers={w}: warm-up (worker start-up) {time.time() - t0:.2f}s")
            best = None
            for r in range(args.repeat):
                out = tmp / f"ds-w{w}-{r}"
                load = os.getloadavg()[0]
                c0 = _ray_cpu_seconds()
                t0 = time.time()
                m = preprocess([str(inp)], str(tmp / "tok"), str(out), num_shards=8, heldout_fraction=0.01,
                               workers=w, quiet=True)
                dt = time.time() - t0
                cpu = _ray_cpu_seconds() - c0
                tokens = sum(s["tokens"] for s in m["splits"].values())
                print(f"preprocess: workers={w} run {r + 1}: {mb:.1f} MB, {m['totals']['documents_written']:,} docs, "
                      f"{tokens:,} tokens in {dt:.2f}s = {tokens / dt:,.0f} tokens/s = {tokens / dt / w:,.0f} "
                      f"tokens/s per core; workers used {cpu:.1f} CPU-s (load average {load:.2f})")
                # Wall clock: the fastest run. CPU seconds: the largest reading, since the only way the
                # reading errs is low (a worker that exits mid-run and is reaped out of our sight).
                best = (dt, cpu) if best is None else (min(best[0], dt), max(best[1], cpu))
        finally:
            ray.shutdown()
        per_core[w] = (tokens / best[0] / w, tokens / max(best[1], 1e-9))
    base, base_cpu = per_core[min(per_core)]
    print(f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'workers':>7} {'tokens/s':>12} {'per core':>12} {'scaling eff.':>12} {'tokens/CPU-s':>13} "
          f"{'CPU-s eff.':>10}")
    for w, (pc, pcpu) in per_core.items():
        print(f"{w:>7} {pc * w:12,.0f} {pc:12,.0f} {pc / base:12.2f} {pcpu:13,.0f} {pcpu / base_cpu:10.2f}")
    print("scaling eff. = per-core tokens/s (wall clock) relative to the fewest workers: target >= 0.9, meaningful "
          "only when the load average stays below the core count; CPU-s eff. = tokens per CPU-second of Ray's "
          "workers relative to the fewest workers: the parallel overhead, whatever else runs on the machine")

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
    # What the loader's first-open check of each shard (sha256 against the manifest) costs, beside opening it.
    from bigtrain.data.shards import load_manifest, open_shard

    shards = [(Path(out) / s["path"], s["sha256"]) for s in load_manifest(out)["shards"]]
    t0 = time.perf_counter()
    for f, _ in shards:
        open_shard(f)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f, sha in shards:
        open_shard(f, sha)
    t_hash = max(time.perf_counter() - t0 - t_open, 1e-9)
    mb = sum(f.stat().st_size for f, _ in shards) / 1e6
    print(f"shard check: sha256 of {len(shards)} shards ({mb:,.0f} MB) {t_hash:.2f}s = {mb / t_hash:,.0f} MB/s, beside "
          f"opening them (index and map) {t_open:.2f}s: +{t_hash / t_open:.0%} on a shard's first open in a process "
          "(once)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
