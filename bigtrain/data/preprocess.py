"""``bigtrain preprocess``: raw text → tokenized WebDataset shards, scheduled as Ray tasks, streaming.

Two phases, both Ray tasks; the driver holds only per-chunk statistics and never touches document text.

1. **Tokenize** (one task per input chunk, see :mod:`bigtrain.data.chunks`): read the chunk's documents,
   key each by the sha256 of its UTF-8 text, pick its split from the key (held out when the key's second
   half, read as a fraction, is below ``heldout_fraction``), encode it and append EOS. The chunk's documents
   are sorted by (split, key) and written to run files under ``DIR/.work`` (a new run every
   :data:`RUN_BYTES` of tokens, so a task's memory does not grow with its chunk), with a table of where each
   of the 2**16 key buckets starts. The task returns one small object: counts, and the shard-file bytes per
   key bucket.
2. **Write** (one task per shard): shards are key ranges. From the summed bucket sizes the driver cuts each
   split's key space into ranges of about ``--shard-size`` bytes (or ``--num-shards`` equal ones). A shard's
   writer reads its key range from every run (a slice of each, found through the bucket table), merges by
   key, drops exact duplicates (same key; the first in input order is kept, the others are counted as
   skipped ``duplicate``) and streams the tar to disk.

A shard's content is therefore a function of the set of documents alone, so the output is byte-identical for
any number of workers or nodes, any input order and any chunk size; exact duplicates are removed corpus-wide
without a shuffle of text through Ray (both copies of a document share a key, hence a shard).

Resume: each finished chunk leaves a record (``DIR/.state/chunks``) beside its run files, and each shard a
record (``DIR/.state``) with its sha256. A re-run over the same output redoes only chunks without both, and
rewrites only shards that do not verify. ``manifest.json`` is removed when a run starts and written last (by
rename), so a crashed run never looks complete; the run files are removed after it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.data import readers
from bigtrain.data.chunks import Chunk, auto_chunk_bytes, iter_chunk, plan_chunks
from bigtrain.data.runs import Descriptors, Run, write_run
from bigtrain.data.shards import (FORMAT, MANIFEST, ShardWriter, atomic_write, sha256_file, shard_file_bytes,
                                  token_dtype)
from bigtrain.errors import BigtrainError

BATCH_BYTES = 1 << 20  # text encoded per tokenizer call
RUN_BYTES = 256 << 20  # tokens a chunk task holds before it writes them out as one sorted run
DEFAULT_SHARD_SIZE = 256 << 20
BUCKETS = 1 << 16  # key buckets the shard cuts are chosen from (by the key's first 16 bits)
# glibc gives each of a Ray worker's threads its own malloc arena; a tokenize worker's memory then climbs from
# ~120 to ~360 MiB over its first ten 4 MiB chunks (with 2 arenas it stays at ~150 MiB).
WORKER_ENV = {"MALLOC_ARENA_MAX": "2"}
DUPLICATE = "duplicate"
STATE_DIR = ".state"
WORK_DIR = ".work"
SPLITS = ("train", "heldout")


def doc_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int, what: str) -> int:
    """``"256MB"``, ``"1GiB"``, ``"500k"`` or a number of bytes."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise BigtrainError(f"{what} {text}: expected a size such as 256MB, 1GiB or 1000000")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise BigtrainError(f"{what} {text}: must be at least 1 byte")
    return value


@dataclass(frozen=True)
class ShardSpec:
    split: str
    index: int
    lo: int  # key buckets [lo, hi)
    hi: int

    @property
    def rel(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.tar"

    @property
    def state(self) -> str:
        return f"{STATE_DIR}/{self.split}-shard-{self.index:05d}.json"


def cut_key_space(bucket_bytes: np.ndarray, n: int) -> list[tuple[int, int]]:
    """``n`` ranges of buckets ``[lo, hi)`` covering all of them, each holding as near 1/n of the bytes as
    bucket boundaries allow."""
    cum = np.concatenate([[0], np.cumsum(bucket_bytes, dtype=np.int64)])
    total = int(cum[-1])
    bounds = [0]
    for j in range(1, n):
        t = total * j / n
        b = int(np.searchsorted(cum, t))
        if b > 0 and t - cum[b - 1] < cum[b] - t:
            b -= 1
        bounds.append(min(BUCKETS, max(b, bounds[-1])))
    bounds.append(BUCKETS)
    return list(zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------- tokenize task
_TOKENIZERS: dict[str, Any] = {}  # per worker process: the run's tokenizer, unpickled once


def _worker_tokenizer(handle: tuple):
    """The tokenizer behind ``(key, [ref])``; the ref sits in a list so that Ray does not fetch and unpickle it
    for every task, only on a worker's first task of a run."""
    key, box = handle
    tok = _TOKENIZERS.get(key)
    if tok is None:
        import ray

        # Workers share the machine's cores: one encoding thread each (`tokenizers` would start one per core).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tok = ray.get(box[0]) if isinstance(box[0], ray.ObjectRef) else box[0]
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    return tok


class _RunBuilder:
    """Accumulates a chunk's encoded documents and writes them as sorted runs."""

    def __init__(self, ctx: dict, chunk: Chunk):
        self.ctx, self.chunk = ctx, chunk
        self.dtype = np.dtype(ctx["dtype"])
        self.threshold = ctx["heldout_fraction"] * float(1 << 64)
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("hi", "lo", "src", "pos", "len", "tokens")}
        self.held = 0
        self.runs: list[str] = []
        self.run_bytes: list[int] = []
        self.hist: list[tuple[np.ndarray, np.ndarray]] = []
        self.docs = self.tokens = 0

    def add(self, tok, texts: list[str], srcs: list[int], pos: list[int]) -> None:
        digests = b"".join(hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts)
        keys = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        enc = tok.encode_batch(texts)
        lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        flat = np.fromiter(itertools.chain.from_iterable(enc), dtype=self.dtype, count=int(lens.sum()))
        flat = np.insert(flat, np.cumsum(lens), np.asarray(tok.eos_id, dtype=self.dtype))
        p = self.parts
        p["hi"].append(keys[:, 0])
        p["lo"].append(keys[:, 1])
        p["src"].append(np.asarray(srcs, dtype=np.uint32))
        p["pos"].append((np.int64(self.chunk.index) << 32) + np.asarray(pos, dtype=np.int64))
        p["len"].append(lens + 1)
        p["tokens"].append(flat)
        self.held += flat.nbytes
        self.docs += len(texts)
        self.tokens += len(flat)
        if self.held >= RUN_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.parts["hi"]:
            return
        a = {k: np.concatenate(v) for k, v in self.parts.items()}
        for v in self.parts.values():
            v.clear()
        self.held = 0
        split = (a["lo"].astype(np.float64) < self.threshold).astype(np.int64)  # 1: held out
        order = np.lexsort((a["pos"], a["lo"], a["hi"], split))
        lens = a["len"][order]
        offs = np.concatenate([[0], np.cumsum(lens)])
        src_offs = np.concatenate([[0], np.cumsum(a["len"])])
        tokens = a["tokens"]
        sorted_tokens = np.concatenate([tokens[src_offs[i]:src_offs[i + 1]] for i in order.tolist()])
        hi, split = a["hi"][order], split[order]
        bucket = (hi >> np.uint64(64 - 16)).astype(np.int64)
        starts = np.zeros((len(SPLITS), BUCKETS + 1), dtype=np.int64)
        edges = np.searchsorted(split, [0, 1, 2])
        for s in range(len(SPLITS)):
            a0, a1 = int(edges[s]), int(edges[s + 1])
            starts[s] = a0 + np.searchsorted(bucket[a0:a1], np.arange(BUCKETS + 1))
        name = f"chunk-{self.chunk.index:06d}-{len(self.runs):03d}.run"
        size = write_run(Path(self.ctx["work"]) / name, {
            "hi": hi, "lo": a["lo"][order], "src": a["src"][order], "pos": a["pos"][order], "offs": offs,
            "tokens": sorted_tokens, "starts": starts})
        self.runs.append(name)
        self.run_bytes.append(size)
        # shard-file bytes per (split, bucket): what the shard cuts are balanced on
        flat_bucket = split * BUCKETS + bucket
        first = np.flatnonzero(np.concatenate([[True], flat_bucket[1:] != flat_bucket[:-1]]))
        weight = shard_file_bytes(lens * self.dtype.itemsize)
        self.hist.append((flat_bucket[first], np.add.reduceat(weight, first)))


def _sum_hist(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    idx = np.concatenate([p[0] for p in parts])
    val = np.concatenate([p[1] for p in parts])
    uniq, inv = np.unique(idx, return_inverse=True)
    out = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(out, inv, val)
    return uniq.astype(np.int64), out


def _tokenize_chunk(ctx: dict, chunk: Chunk) -> tuple[dict, np.ndarray, np.ndarray]:
    """Task body: tokenize one chunk into run files; returns (record, bucket index, bucket bytes)."""
    tok = _worker_tokenizer(ctx["tok"])
    builder = _RunBuilder(ctx, chunk)
    stats: dict[int, dict] = {}
    texts: list[str] = []
    srcs: list[int] = []
    pos: list[int] = []
    size = n = text_bytes = 0
    for src, text, reason in iter_chunk(chunk, ctx["text_field"]):
        st = stats.setdefault(src, {"read": 0, "skips": Counter()})
        st["read"] += 1
        if text is None:
            st["skips"][reason] += 1
        else:
            texts.append(text)
            srcs.append(src)
            pos.append(n)
            size += len(text)
        n += 1
        if size >= BATCH_BYTES:
            builder.add(tok, texts, srcs, pos)
            text_bytes += size
            texts, srcs, pos, size = [], [], [], 0
    if texts:
        builder.add(tok, texts, srcs, pos)
        text_bytes += size
    builder.flush()
    hist_idx, hist_val = _sum_hist(builder.hist)
    work = Path(ctx["work"])
    write_run(work / f"chunk-{chunk.index:06d}.hist", {"idx": hist_idx, "val": hist_val})
    import ray

    record = {"fingerprint": ctx["fingerprint"], "chunk": chunk.index, "pieces": chunk.describe(),
              "runs": builder.runs, "run_bytes": builder.run_bytes, "docs": builder.docs, "tokens": builder.tokens,
              "text_chars": text_bytes, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
              "stats": {str(s): {"read": v["read"], "skips": dict(v["skips"])} for s, v in sorted(stats.items())}}
    atomic_write(Path(ctx["out"]) / STATE_DIR / "chunks" / f"{chunk.index:06d}.json",
                 json.dumps(record, sort_keys=True).encode())
    return record, hist_idx, hist_val


# ---------------------------------------------------------------- write task
def _kept_shard(out: Path, spec: ShardSpec, fingerprint: str) -> dict | None:
    """The record of a shard already on disk for this plan whose bytes still verify, else None."""
    state, tar = out / spec.state, out / spec.rel
    if not (state.is_file() and tar.is_file()):
        return None
    try:
        info = json.loads(state.read_text())
    except ValueError:
        return None
    if (info.get("fingerprint") != fingerprint or info.get("keys") != [spec.lo, spec.hi]
            or tar.stat().st_size != info.get("bytes") or sha256_file(tar) != info.get("sha256")):
        return None
    return info


def _write_shard(ctx: dict, spec: ShardSpec) -> dict:
    """Task body: write one shard from the runs (or keep a verified one); ``{"need_runs": True}`` when the
    shard must be written and run files are missing (a finished run removes them)."""
    out = Path(ctx["out"])
    info = _kept_shard(out, spec, ctx["fingerprint"])
    if info is not None:
        return {**info, "kept": True}
    if ctx.get("verify_only"):
        return {"need_runs": True}
    work = out / WORK_DIR
    try:
        runs = json.loads((work / "runs.json").read_text())
    except (OSError, ValueError):
        return {"need_runs": True}
    if any(not (work / name).is_file() for name in runs):
        return {"need_runs": True}
    s = SPLITS.index(spec.split)
    dtype = np.dtype(ctx["dtype"])
    # Only the index of the shard's key range is held in memory (about 40 bytes a document); tokens are read
    # document by document as the tar is written, so a writer's memory does not grow with the shard.
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("hi", "lo", "src", "pos", "run", "start", "len")}
    paths, bases = [], []
    for k, name in enumerate(runs):
        with Run(work / name) as r:
            paths.append(str(work / name))
            bases.append(r.offset("tokens"))
            d0, d1 = (int(x) for x in r["starts"][s, [spec.lo, spec.hi]])
            if d1 == d0:
                continue
            offs = np.array(r["offs"][d0:d1 + 1])
            for key in ("hi", "lo", "src", "pos"):
                cols[key].append(np.array(r[key][d0:d1]))
            cols["run"].append(np.full(d1 - d0, k, dtype=np.int64))
            cols["start"].append(offs[:-1])
            cols["len"].append(np.diff(offs))
    empty = {"hi": np.uint64, "lo": np.uint64, "src": np.uint32}
    a = {k: np.concatenate(v) if v else np.zeros(0, dtype=empty.get(k, np.int64)) for k, v in cols.items()}
    order = np.lexsort((a["pos"], a["lo"], a["hi"]))
    hi, lo = a["hi"][order], a["lo"][order]
    first = np.concatenate([[True], (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])]) if len(order) else np.zeros(0, bool)
    files = Descriptors()
    try:
        with ShardWriter(out / spec.rel) as w:
            for i in order[first].tolist():
                k, n = int(a["run"][i]), int(a["len"][i])
                data = files.pread(paths[k], n * dtype.itemsize, bases[k] + int(a["start"][i]) * dtype.itemsize)
                w.add(f"{int(a['hi'][i]):016x}{int(a['lo'][i]):016x}", np.frombuffer(data, dtype=dtype))
            sha = w.close()
    finally:
        files.close()
    src = a["src"][order]
    info = {"path": spec.rel, "split": spec.split, "samples": w.samples, "bytes": w.bytes, "tokens": w.tokens,
            "sha256": sha, "keys": [spec.lo, spec.hi], "fingerprint": ctx["fingerprint"],
            "written": _counts(src[first]), "duplicates": _counts(src[~first])}
    atomic_write(out / spec.state, json.dumps(info, sort_keys=True).encode())
    return info


def _counts(src: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(src, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


# ---------------------------------------------------------------- the job
@dataclass
class PreprocessJob:
    """Everything ``bigtrain preprocess`` is asked to do. ``tokenizer`` is anything
    :func:`~bigtrain.tokenizer.load_tokenizer` reads; every document ends with its EOS, or with ``eos_token``
    (a token of its vocabulary). Shards hold about ``shard_size`` bytes each (default 256 MiB), unless
    ``num_shards`` fixes the train shard count. ``workers`` is the local Ray's CPUs (default: all) or, on an
    existing cluster (``ray_address``, or a Ray this process already joined), the most tasks at once."""

    inputs: list[str]
    tokenizer: str
    output: str
    shard_size: int | str | None = None
    num_shards: int | None = None
    heldout_fraction: float = 0.01
    text_field: str = "text"
    chunk_size: int | str | None = None
    workers: int | None = None
    ray_address: str | None = None
    eos_token: str | None = None
    quiet: bool = False
    report: dict = field(default_factory=dict)  # filled by run(): chunks, Ray objects, times

    def run(self) -> dict:
        """Run the pipeline; returns the manifest."""
        return _Pipeline(self).run()


class _Pipeline:
    def __init__(self, job: PreprocessJob):
        from bigtrain.tokenizer import load_tokenizer

        self.job = job
        if job.num_shards is not None and job.num_shards < 1:
            raise BigtrainError(f"--num-shards {job.num_shards}: must be at least 1")
        if job.num_shards is not None and job.shard_size is not None:
            raise BigtrainError("--num-shards and --shard-size: give one of them")
        self.shard_size = None if job.num_shards is not None else parse_size(
            job.shard_size if job.shard_size is not None else DEFAULT_SHARD_SIZE, "--shard-size")
        if not 0 <= job.heldout_fraction < 1:
            raise BigtrainError(f"--heldout-fraction {job.heldout_fraction}: must be in [0, 1)")
        if job.workers is not None and job.workers < 1:
            raise BigtrainError(f"--workers {job.workers}: must be at least 1")
        self.files = readers.expand_inputs(job.inputs)
        tok = load_tokenizer(job.tokenizer)
        if job.eos_token is not None:
            try:
                tok = tok.with_eos(job.eos_token)
            except BigtrainError as e:
                raise BigtrainError(f"--eos-token: {e}") from None
        if tok.eos_id < 0:
            raise BigtrainError(f"--tokenizer {job.tokenizer}: the tokenizer has no EOS token to end documents "
                                "with; name one of its tokens with --eos-token TOKEN")
        self.tok = tok
        self.tok_info = {**tok.info(), "path": str(Path(tok.path).resolve())}
        self.out = Path(job.output)
        if self.out.exists() and not self.out.is_dir():
            raise BigtrainError(f"--output {self.out}: exists and is not a directory")
        total = sum(f.stat().st_size for f in self.files)
        self.chunk_bytes = (parse_size(job.chunk_size, "--chunk-size") if job.chunk_size is not None
                            else auto_chunk_bytes(total))
        self.chunks = plan_chunks(self.files, job.text_field, self.chunk_bytes)  # reads parquet footers: checks
        self.dtype = token_dtype(tok.vocab_size)
        self.chunk_fp, self.fingerprint = self._fingerprints()
        self.report = job.report
        self.report.update(chunks=len(self.chunks), chunk_bytes=self.chunk_bytes, chunks_reused=0,
                           ray_objects=0, tokenize_tasks=0, write_tasks=0)
        self.progress = None

    def _fingerprints(self) -> tuple[str, str]:
        from bigtrain import __version__

        j = self.job
        # What a chunk's runs depend on; file identity by size and mtime (hashing a TB corpus up front is hours).
        chunk = {"version": __version__, "format": FORMAT, "tokenizer": self.tok_info["sha256"],
                 "eos_id": self.tok_info["eos_id"], "text_field": j.text_field,
                 "heldout_fraction": j.heldout_fraction, "chunk_bytes": self.chunk_bytes,
                 "inputs": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in self.files]}
        whole = {**chunk, "shard_size": self.shard_size, "num_shards": j.num_shards}

        def digest(obj):
            return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()

        return digest(chunk), digest(whole)

    # --- Ray --------------------------------------------------------------------------------
    def run(self) -> dict:
        import ray

        t0 = time.time()
        manifest_path = self.out / MANIFEST
        self.out.mkdir(parents=True, exist_ok=True)
        started = False
        if ray.is_initialized():
            pass  # a Ray this process already joined (tests, notebooks, a Ray job's driver)
        elif self.job.ray_address:
            try:
                ray.init(address=self.job.ray_address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise BigtrainError(f"--ray-address {self.job.ray_address}: cannot connect to Ray ({first})") from None
            started = True
        else:
            init_local_ray(self.job.workers or os.cpu_count() or 1)
            started = True
        self.report["ray_start_s"] = round(time.time() - t0, 2)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.own_ray = started and not self.job.ray_address
        if self.own_ray:
            self.limit = 2 * cpus  # our own Ray runs `workers` at once; one queued each keeps them busy
        else:
            self.limit = self.job.workers or 2 * cpus
        try:
            manifest = self._run(ray)
        except ray.exceptions.RayError as e:
            raise _unwrap(ray, e) from None
        finally:
            if self.progress is not None:
                self.progress.close()
            if started:
                ray.shutdown()
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        if not (manifest_path.is_file() and manifest_path.read_bytes() == data):
            atomic_write(manifest_path, data)
        shutil.rmtree(self.out / WORK_DIR, ignore_errors=True)
        self.report["seconds"] = round(time.time() - t0, 2)
        if not self.job.quiet:
            print_summary(manifest)
        return manifest

    def _run(self, ray) -> dict:
        # On a cluster we did not start, the tasks ask for MALLOC_ARENA_MAX themselves (see init_local_ray);
        # our own Ray's workers have it from the start, so its prestarted workers can take the first tasks.
        env = {} if self.own_ray else {"runtime_env": {"env_vars": dict(WORKER_ENV)}}
        self.tok_task = ray.remote(num_cpus=1, **env)(_tokenize_chunk)
        self.write_task = ray.remote(num_cpus=0.5, **env)(_write_shard)
        self.ctx = {"out": str(self.out.resolve()), "work": str((self.out / WORK_DIR).resolve()),
                    "fingerprint": self.chunk_fp, "text_field": self.job.text_field, "dtype": self.dtype.str,
                    "heldout_fraction": self.job.heldout_fraction, "tok": None}
        records = self._chunk_records()
        plan = self._saved_plan() if len(records) == len(self.chunks) else None
        manifest_path = self.out / MANIFEST
        if plan is not None and manifest_path.is_file():
            infos = self._write(ray, plan, records, verify_only=True)
            if len(infos) == len(plan):
                if not self.job.quiet:
                    print(f"preprocess: {self.out} is up to date ({len(plan)} shards verified)", flush=True)
                return self._manifest(plan, infos, records)
        # From here on the output changes: it must not look complete until the new manifest is written.
        manifest_path.unlink(missing_ok=True)
        (self.out / WORK_DIR).mkdir(exist_ok=True)
        if plan is None:
            self._tokenize(ray, records)
            plan = self._plan(records)
        t0 = time.time()
        infos = self._write(ray, plan, records)
        self.report["write_s"] = round(time.time() - t0, 2)
        return self._manifest(plan, infos, records)

    def _bar(self, desc: str, total: int, **kw):
        """A progress bar on stderr (closed by run() if a task fails); in a log file, a line every 30 s."""
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.progress = tqdm(total=total, desc=desc, disable=self.job.quiet, mininterval=1 if tty else 30,
                             ascii=not tty, dynamic_ncols=True, **kw)
        return self.progress

    def _as_completed(self, ray, task, ctx: dict, items: list, counter: str):
        """``(item, result)`` of ``task(ctx, item)`` for every item, as tasks finish, with at most ``self.limit``
        in flight (each call is one Ray object, counted in the report)."""
        pending: dict = {}
        queue = deque(items)
        while queue or pending:
            while queue and len(pending) < self.limit:
                item = queue.popleft()
                pending[task.remote(ctx, item)] = item
                self.report["ray_objects"] += 1
                self.report[counter] += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), ray.get(done[0])

    def _put_tokenizer(self, ray) -> None:
        if self.ctx["tok"] is None:
            self.ctx["tok"] = (f"{self.tok.sha256}:{self.tok.eos_id}", [ray.put(self.tok)])
            self.report["ray_objects"] += 1

    # --- phase 1 ----------------------------------------------------------------------------
    def _chunk_records(self) -> dict[int, dict]:
        records = {}
        for c in self.chunks:
            p = self.out / STATE_DIR / "chunks" / f"{c.index:06d}.json"
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("fingerprint") == self.chunk_fp and rec.get("chunk") == c.index:
                records[c.index] = rec
        return records

    def _has_runs(self, rec: dict) -> bool:
        work = self.out / WORK_DIR
        names = [*rec["runs"], f"chunk-{rec['chunk']:06d}.hist"]
        sizes = [*rec["run_bytes"], None]
        return all((work / n).is_file() and (s is None or (work / n).stat().st_size == s)
                   for n, s in zip(names, sizes))

    def _tokenize(self, ray, records: dict[int, dict]) -> None:
        """Tokenize every chunk that lacks a record or run files; fills ``records`` and ``self.hist``."""
        from tqdm import tqdm

        self.hist = np.zeros(len(SPLITS) * BUCKETS, dtype=np.int64)
        todo = []
        for c in self.chunks:
            rec = records.get(c.index)
            if rec is not None and self._has_runs(rec):
                with Run(self.out / WORK_DIR / f"chunk-{c.index:06d}.hist") as h:
                    np.add.at(self.hist, np.array(h["idx"]), np.array(h["val"]))
            else:
                records.pop(c.index, None)
                todo.append(c)
        self.report["chunks_reused"] = len(self.chunks) - len(todo)
        total = sum(c.bytes for c in self.chunks)
        done_bytes = total - sum(c.bytes for c in todo)
        bar = self._bar("tokenize", total, initial=done_bytes, unit="B", unit_scale=True)
        if not self.job.quiet and self.report["chunks_reused"]:
            tqdm.write(f"preprocess: {self.report['chunks_reused']} of {len(self.chunks)} chunks already "
                       f"tokenized in {self.out / WORK_DIR}", file=sys.stderr)
        if todo:
            self._put_tokenizer(ray)
        t0 = time.time()
        tokens = 0
        for c, (rec, idx, val) in self._as_completed(ray, self.tok_task, self.ctx, todo, "tokenize_tasks"):
            records[c.index] = rec
            np.add.at(self.hist, idx, val)
            tokens += rec["tokens"]
            bar.update(c.bytes)
            bar.set_postfix_str(f"{tokens / max(time.time() - t0, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
        bar.close()
        self.progress = None
        self.report["tokenize_s"] = round(time.time() - t0, 2)
        self.report["tokens_tokenized"] = tokens

    # --- the cut -----------------------------------------------------------------------------
    def _saved_plan(self) -> list[ShardSpec] | None:
        try:
            saved = json.loads((self.out / STATE_DIR / "plan.json").read_text())
        except (OSError, ValueError):
            return None
        if saved.get("fingerprint") != self.fingerprint:
            return None
        return [ShardSpec(*row) for row in saved["shards"]]

    def _plan(self, records: dict[int, dict]) -> list[ShardSpec]:
        hist = self.hist.reshape(len(SPLITS), BUCKETS)
        frac, n_fixed = self.job.heldout_fraction, self.job.num_shards
        plan = []
        for s, split in enumerate(SPLITS):
            total = int(hist[s].sum())
            if split == "heldout" and frac <= 0:
                continue
            if n_fixed is not None:
                n = n_fixed if split == "train" else max(1, math.ceil(n_fixed * frac))
            else:
                n = max(1, round(total / self.shard_size))
            plan += [ShardSpec(split, i, lo, hi) for i, (lo, hi) in enumerate(cut_key_space(hist[s], n))]
        atomic_write(self.out / STATE_DIR / "plan.json", json.dumps(
            {"fingerprint": self.fingerprint, "shards": [[p.split, p.index, p.lo, p.hi] for p in plan]},
            sort_keys=True).encode())
        return plan

    # --- phase 2 -----------------------------------------------------------------------------
    def _write(self, ray, plan: list[ShardSpec], records: dict[int, dict],
               verify_only: bool = False) -> dict[ShardSpec, dict]:
        """Write (or keep verified) shards; with ``verify_only``, only the infos of shards that verify."""
        ctx = {**self.ctx, "fingerprint": self.fingerprint, "verify_only": verify_only}
        if not verify_only:
            wanted = {p.rel for p in plan}
            for split in SPLITS:  # shards of an earlier run with other options, and temporaries of a killed one
                for old in (self.out / split).glob("*") if (self.out / split).is_dir() else []:
                    if f"{split}/{old.name}" not in wanted and (old.name.startswith("shard-") or old.suffix == ".tmp"):
                        old.unlink()
            self._write_run_list(records)
        infos: dict[ShardSpec, dict] = {}
        todo = list(plan)
        for attempt in range(2):
            bar = self._bar("verify" if verify_only else "write", len(todo), unit="shard")
            missing = []
            for spec, info in self._as_completed(ray, self.write_task, ctx, todo, "write_tasks"):
                if info.get("need_runs"):
                    missing.append(spec)
                else:
                    infos[spec] = info
                bar.update(1)
            bar.close()
            self.progress = None
            if not missing or attempt or verify_only:
                break
            # Shards to rewrite after the run files were removed (a finished run, then a damaged shard).
            self._tokenize(ray, records)
            self._write_run_list(records)
            todo = missing
        if len(infos) != len(plan) and not verify_only:
            raise BigtrainError(f"{self.out}: run files disappeared while shards were written; run again")
        self.report["shards_kept"] = sum(1 for i in infos.values() if i.get("kept"))
        return infos

    def _write_run_list(self, records: dict[int, dict]) -> None:
        names = [n for c in self.chunks if c.index in records for n in records[c.index]["runs"]]
        atomic_write(self.out / WORK_DIR / "runs.json", json.dumps(names).encode())

    # --- manifest ------------------------------------------------------------------------------
    def _manifest(self, plan: list[ShardSpec], infos: dict[ShardSpec, dict], records: dict[int, dict]) -> dict:
        from bigtrain import __version__

        n_in = len(self.files)
        read = np.zeros(n_in, dtype=np.int64)
        written = np.zeros(n_in, dtype=np.int64)
        skips: list[Counter] = [Counter() for _ in range(n_in)]
        for rec in records.values():
            for src, st in rec["stats"].items():
                read[int(src)] += st["read"]
                skips[int(src)].update(st["skips"])
        for info in infos.values():
            for src, c in info["written"].items():
                written[int(src)] += c
            for src, c in info["duplicates"].items():
                skips[int(src)][DUPLICATE] += c
        rows = []
        for i, f in enumerate(self.files):
            skipped = {k: v for k, v in sorted(skips[i].items()) if v}
            if read[i] != written[i] + sum(skipped.values()):
                raise BigtrainError(f"{f}: internal count mismatch (read {read[i]}, written {written[i]}, "
                                    f"skipped {sum(skipped.values())})")
            rows.append({"path": str(f), "format": readers.detect_format(f), "bytes": f.stat().st_size,
                         "documents_read": int(read[i]), "documents_written": int(written[i]),
                         "documents_skipped": skipped})
        shards = [{k: infos[p][k] for k in ("path", "split", "samples", "bytes", "tokens", "sha256")} for p in plan]
        splits = {}
        for split in SPLITS:
            got = [s for s in shards if s["split"] == split]
            splits[split] = {"shards": len(got), "samples": sum(r["samples"] for r in got),
                             "tokens": sum(r["tokens"] for r in got)}
        return {"format": FORMAT, "bigtrain_version": __version__, "tokenizer": self.tok_info,
                "token_dtype": self.dtype.name, "text_field": self.job.text_field,
                "heldout_fraction": self.job.heldout_fraction, "num_shards": splits["train"]["shards"],
                "shard_size": self.shard_size, "splits": splits, "shards": shards, "inputs": rows,
                "totals": {"documents_read": sum(r["documents_read"] for r in rows),
                           "documents_written": sum(r["documents_written"] for r in rows),
                           "documents_skipped": sum(sum(r["documents_skipped"].values()) for r in rows)}}


def preprocess(inputs: list[str], tokenizer: str, output: str, **options) -> dict:
    """``PreprocessJob(inputs, tokenizer, output, **options).run()``."""
    return PreprocessJob(list(inputs), str(tokenizer), str(output), **options).run()


def init_local_ray(num_cpus: int) -> None:
    """Start a private local Ray whose workers can import this copy of bigtrain (also for tests)."""
    import ray

    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    # Through the environment the raylet inherits rather than a runtime_env: the workers Ray starts with the
    # raylet then fit every task, so the first tasks do not wait for new worker processes.
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", *WORKER_ENV)}
    os.environ.update({"PYTHONPATH": path, **WORKER_ENV})
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _unwrap(ray, e: Exception) -> Exception:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BigtrainError):
        return BigtrainError(str(cause))
    if isinstance(e, ray.exceptions.RayTaskError) and cause is not None:
        return BigtrainError(f"preprocess task failed: {type(cause).__name__}: {str(cause).splitlines()[0]}")
    return e


def print_summary(manifest: dict, file=None) -> None:
    file = file or sys.stdout
    print(f"{'split':<8} {'shards':>7} {'samples':>10} {'tokens':>14}", file=file)
    for split, s in manifest["splits"].items():
        print(f"{split:<8} {s['shards']:>7} {s['samples']:>10,} {s['tokens']:>14,}", file=file)
    w = max([len("input")] + [len(Path(r["path"]).name) for r in manifest["inputs"]])
    print(f"{'input':<{w}} {'read':>10} {'written':>10} {'skipped':>10}  reasons", file=file)
    for r in manifest["inputs"]:
        reasons = ", ".join(f"{k}={v}" for k, v in r["documents_skipped"].items()) or "-"
        print(f"{Path(r['path']).name:<{w}} {r['documents_read']:>10,} {r['documents_written']:>10,} "
              f"{sum(r['documents_skipped'].values()):>10,}  {reasons}", file=file, flush=True)
