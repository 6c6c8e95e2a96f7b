"""``bigtrain preprocess``: raw text → tokenized WebDataset shards, scheduled as Ray tasks.

Pipeline (all Ray tasks; the driver only routes object references and prints progress):

1. ``_read`` (one streaming task per input, 0.1 CPU): yields batches of documents (~1 MB of text)
   with the per-document skip reasons counted.
2. ``_tokenize`` (0.9 CPU): hashes each document (sha256 of its UTF-8 text → key), picks its split
   (held out when the key's second half, read as a fraction, is below ``heldout_fraction``) and its
   shard (key modulo the split's shard count), encodes it with the tokenizer (unpickled once per worker)
   and appends EOS (the tokenizer's, or ``--eos-token``). It returns one bucket per shard, so each
   writer fetches only its own documents.
3. ``_write`` (0.9 CPU, one per shard): gathers its buckets, sorts by (key, input path, index in
   input), drops exact duplicates (same key: the first is kept, the others are counted as skipped
   ``duplicate``) and writes the tar to a temporary name, then renames it.

Nothing in the output depends on the number of workers, the order of the inputs or the order in
which tasks finish, so the output is byte-identical across such runs. ``manifest.json`` is written
last (also by rename), and removed when a run starts, so a crashed run never looks complete.
A re-run over the same output keeps every shard whose state record (``.state/``) matches this run's
fingerprint (tokenizer, inputs' paths and sha256, options) and whose sha256 still verifies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.data import readers
from bigtrain.data.shards import (FORMAT, MANIFEST, atomic_write, sha256_file, shard_bytes, token_dtype)
from bigtrain.errors import BigtrainError

BATCH_BYTES = 1 << 20
DUPLICATE = "duplicate"
STATE_DIR = ".state"


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    count: int

    @property
    def rel(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.tar"


def plan_shards(num_shards: int, heldout_fraction: float) -> list[ShardPlan]:
    n_held = 0 if heldout_fraction <= 0 else max(1, int(np.ceil(num_shards * heldout_fraction)))
    return ([ShardPlan("train", i, num_shards) for i in range(num_shards)]
            + [ShardPlan("heldout", i, n_held) for i in range(n_held)])


def doc_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def route(key: str, heldout_fraction: float, num_train: int, num_heldout: int) -> int:
    """Index into plan_shards(...) of the shard that holds the document with this key."""
    if num_heldout and int(key[16:32], 16) / float(1 << 64) < heldout_fraction:
        return num_train + int(key[:16], 16) % num_heldout
    return int(key[:16], 16) % num_train


# ---------------------------------------------------------------- tasks (bodies; wrapped by ray.remote)
def _read_body(path: str, text_field: str, batch_bytes: int):
    texts: list[str] = []
    idx: list[int] = []
    skips: Counter = Counter()
    read = size = 0
    for i, (text, reason) in enumerate(readers.iter_documents(path, text_field)):
        read += 1
        if text is None:
            skips[reason] += 1
        else:
            texts.append(text)
            idx.append(i)
            size += len(text)
        if size >= batch_bytes:
            yield {"path": path, "texts": texts, "idx": idx, "read": read, "skips": dict(skips)}
            texts, idx, skips, read, size = [], [], Counter(), 0, 0
    if read or texts:
        yield {"path": path, "texts": texts, "idx": idx, "read": read, "skips": dict(skips)}


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


def _tokenize_body(batch: dict, tok_handle: tuple, heldout_fraction: float, num_train: int, num_heldout: int,
                   skip_shards: frozenset, dtype_str: str):
    tok = _worker_tokenizer(tok_handle)
    n = num_train + num_heldout
    keys = [doc_key(t) for t in batch["texts"]]
    dest = [route(k, heldout_fraction, num_train, num_heldout) for k in keys]
    todo = [j for j, s in enumerate(dest) if s not in skip_shards]
    encoded = tok.encode_batch([batch["texts"][j] for j in todo], eos=True) if todo else []
    per_shard: list[list[int]] = [[] for _ in range(n)]
    enc_of = {}
    for j, ids in zip(todo, encoded):
        enc_of[j] = ids
        per_shard[dest[j]].append(j)
    buckets = []
    tokens_total = 0
    for s in range(n):
        js = per_shard[s]
        lengths = np.array([len(enc_of[j]) for j in js], dtype=np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(enc_of[j] for j in js), dtype=dtype_str,
                           count=int(lengths.sum()))
        tokens_total += len(flat)
        buckets.append({"path": batch["path"], "keys": [keys[j] for j in js],
                        "idx": np.array([batch["idx"][j] for j in js], dtype=np.int64),
                        "lengths": lengths, "tokens": flat})
    stats = {"path": batch["path"], "read": batch["read"], "skips": batch["skips"], "tokens": tokens_total,
             "docs": len(keys), "bytes": sum(len(t) for t in batch["texts"])}
    return (*buckets, stats)


def _write_body(out_dir: str, rel: str, fingerprint: str, *buckets) -> dict:
    docs = []  # (key, path, idx, tokens)
    for b in buckets:
        offsets = np.concatenate([[0], np.cumsum(b["lengths"])])
        for k, key in enumerate(b["keys"]):
            docs.append((key, b["path"], int(b["idx"][k]), b["tokens"][offsets[k]:offsets[k + 1]]))
    docs.sort(key=lambda d: (d[0], d[1], d[2]))
    samples = []
    written: Counter = Counter()
    dups: Counter = Counter()
    last = None
    for key, path, _idx, toks in docs:
        if key == last:
            dups[path] += 1
            continue
        last = key
        written[path] += 1
        samples.append((key, toks))
    data = shard_bytes(samples)
    target = Path(out_dir) / rel
    atomic_write(target, data)
    info = {"path": rel, "split": rel.split("/")[0], "samples": len(samples), "bytes": len(data),
            "tokens": int(sum(len(t) for _, t in samples)), "sha256": hashlib.sha256(data).hexdigest(),
            "written": dict(written), "duplicates": dict(dups), "fingerprint": fingerprint}
    state = Path(out_dir) / STATE_DIR / (rel.replace("/", "-") + ".json")
    atomic_write(state, json.dumps(info, sort_keys=True).encode())
    return info


# ---------------------------------------------------------------- driver
class _Progress:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.time()
        self.last = 0.0
        self.docs = self.tokens = self.batches = self.bytes = self.shards = 0
        self.total_shards = 0

    def show(self, force: bool = False) -> None:
        now = time.time()
        if self.quiet or (not force and now - self.last < 2.0):
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        print(f"preprocess: {self.docs:,} documents, {self.tokens:,} tokens ({self.tokens / el:,.0f}/s), "
              f"{self.batches} batches, shards {self.shards}/{self.total_shards}, {el:.1f}s", flush=True)


def _fingerprint(tok_info: dict, inputs: list[Path], text_field: str, num_shards: int,
                 heldout_fraction: float) -> str:
    from bigtrain import __version__

    ident = {"version": __version__, "format": FORMAT, "tokenizer": tok_info["sha256"], "eos_id": tok_info["eos_id"],
             "text_field": text_field, "num_shards": num_shards, "heldout_fraction": heldout_fraction,
             "inputs": [[str(p), p.stat().st_size, sha256_file(p)] for p in inputs]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _verified_state(out: Path, plan: ShardPlan, fingerprint: str) -> dict | None:
    state = out / STATE_DIR / (plan.rel.replace("/", "-") + ".json")
    tar = out / plan.rel
    if not (state.is_file() and tar.is_file()):
        return None
    try:
        info = json.loads(state.read_text())
    except ValueError:
        return None
    if info.get("fingerprint") != fingerprint or sha256_file(tar) != info.get("sha256"):
        return None
    return info


def preprocess(inputs: list[str], tokenizer: str, output: str, num_shards: int = 8,
               heldout_fraction: float = 0.01, text_field: str = "text", workers: int | None = None,
               ray_address: str | None = None, quiet: bool = False, eos_token: str | None = None) -> dict:
    """Run the pipeline; returns the manifest. Starts a local Ray (``workers`` CPUs) unless Ray is
    already initialised in this process or ``ray_address`` is given; ``workers`` also caps the
    number of tokenize tasks in flight. ``tokenizer`` is anything :func:`~bigtrain.tokenizer.load_tokenizer`
    reads; every document ends with its EOS, or with ``eos_token`` (a token of its vocabulary) when given."""
    from bigtrain import __version__
    from bigtrain.tokenizer import load_tokenizer

    if num_shards < 1:
        raise BigtrainError(f"--num-shards {num_shards}: must be at least 1")
    if not 0 <= heldout_fraction < 1:
        raise BigtrainError(f"--heldout-fraction {heldout_fraction}: must be in [0, 1)")
    if workers is not None and workers < 1:
        raise BigtrainError(f"--workers {workers}: must be at least 1")
    files = readers.expand_inputs(inputs)
    for f in files:
        readers.check_input(f, text_field)
    tok = load_tokenizer(tokenizer)
    if eos_token is not None:
        try:
            tok = tok.with_eos(eos_token)
        except BigtrainError as e:
            raise BigtrainError(f"--eos-token: {e}") from None
    if tok.eos_id < 0:
        raise BigtrainError(f"--tokenizer {tokenizer}: the tokenizer has no EOS token to end documents with; "
                            "name one of its tokens with --eos-token TOKEN")
    tok_info = {**tok.info(), "path": str(Path(tok.path).resolve())}
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise BigtrainError(f"--output {out}: exists and is not a directory")
    plan = plan_shards(num_shards, heldout_fraction)
    num_train = num_shards
    num_held = len(plan) - num_train
    fingerprint = _fingerprint(tok_info, files, text_field, num_shards, heldout_fraction)
    dtype = token_dtype(tok.vocab_size)

    manifest_path = out / MANIFEST
    kept = {}
    for i, p in enumerate(plan):
        info = _verified_state(out, p, fingerprint)
        if info is not None:
            kept[i] = info
    if len(kept) == len(plan) and manifest_path.is_file():
        if not quiet:
            print(f"preprocess: {out} is up to date ({len(plan)} shards verified)", flush=True)
        manifest = json.loads(manifest_path.read_text())
        if not quiet:
            print_summary(manifest)
        return manifest
    if manifest_path.exists():
        manifest_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    wanted = {p.rel for p in plan}
    for split in ("train", "heldout"):  # shards of an earlier run with other options
        for old in (out / split).glob("shard-*.tar") if (out / split).is_dir() else []:
            if f"{split}/{old.name}" not in wanted:
                old.unlink()

    import ray

    started = False
    if ray.is_initialized():
        pass  # a Ray this process already joined (tests, notebooks, a Ray job's driver)
    elif ray_address:
        try:
            ray.init(address=ray_address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BigtrainError(f"--ray-address {ray_address}: cannot connect to Ray "
                                f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        started = True
    else:
        init_local_ray(workers or os.cpu_count() or 1)
        started = True
    try:
        manifest = _run(ray, files, tok, tok_info, out, plan, kept, fingerprint, dtype, heldout_fraction,
                        num_train, num_held, text_field, workers, quiet, __version__)
    finally:
        if started:
            ray.shutdown()
    atomic_write(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    if not quiet:
        print_summary(manifest)
    return manifest


def init_local_ray(num_cpus: int) -> None:
    """Start a private local Ray whose workers can import this copy of bigtrain (also for tests)."""
    import ray

    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})


def _unwrap(ray, e: Exception) -> Exception:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BigtrainError):
        return BigtrainError(str(cause))
    if isinstance(e, ray.exceptions.RayTaskError) and cause is not None:
        return BigtrainError(f"preprocess task failed: {type(cause).__name__}: {str(cause).splitlines()[0]}")
    return e


def _run(ray, files, tok, tok_info, out, plan, kept, fingerprint, dtype, heldout_fraction, num_train, num_held,
         text_field, workers, quiet, version) -> dict:
    read_task = ray.remote(num_cpus=0.1)(_read_body)
    tok_task = ray.remote(num_cpus=0.9)(_tokenize_body)
    write_task = ray.remote(num_cpus=0.9)(_write_body)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    limit = workers or max(1, cluster_cpus)
    tok_handle = (f"{tok.sha256}:{tok.eos_id}", [ray.put(tok)])
    skip = frozenset(kept)
    n = len(plan)
    prog = _Progress(quiet)
    prog.total_shards = n
    prog.shards = len(kept)

    buckets: list[list] = [[] for _ in range(n)]
    stats_refs: list = []
    pending: list = []  # stats refs of tokenize tasks in flight
    stats: dict[str, dict] = {str(f): {"read": 0, "skips": Counter(), "written": 0} for f in files}

    def settle(ref) -> None:
        s = ray.get(ref)
        st = stats[s["path"]]
        st["read"] += s["read"]
        st["skips"].update(s["skips"])
        prog.docs += s["docs"]
        prog.tokens += s["tokens"]
        prog.bytes += s["bytes"]
        prog.batches += 1
        prog.show()

    try:
        for f in files:  # inputs are read one after another; their batches are tokenized in parallel
            gen = read_task.options(_generator_backpressure_num_objects=2 * limit + 2).remote(
                str(f), text_field, BATCH_BYTES)
            for batch_ref in gen:
                while len(pending) >= limit:
                    done, pending[:] = ray.wait(pending, num_returns=1)
                    settle(done[0])
                refs = tok_task.options(num_returns=n + 1).remote(
                    batch_ref, tok_handle, heldout_fraction, num_train, num_held, skip, dtype.str)
                for s in range(n):
                    buckets[s].append(refs[s])
                pending.append(refs[n])
                stats_refs.append(refs[n])
        while pending:
            done, pending[:] = ray.wait(pending, num_returns=1)
            settle(done[0])
        writes = {write_task.remote(str(out), plan[s].rel, fingerprint, *buckets[s]): s
                  for s in range(n) if s not in kept}
        infos = dict(kept)
        remaining = list(writes)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            infos[writes[done[0]]] = ray.get(done[0])
            prog.shards += 1
            prog.show()
    except ray.exceptions.RayError as e:
        raise _unwrap(ray, e) from None
    prog.show(force=True)

    for info in infos.values():
        for path, c in info["written"].items():
            stats[path]["written"] += c
        for path, c in info["duplicates"].items():
            stats[path]["skips"][DUPLICATE] += c
    shards = [{k: infos[s][k] for k in ("path", "split", "samples", "bytes", "tokens", "sha256")} for s in range(n)]
    input_rows = []
    for f in files:
        st = stats[str(f)]
        skipped = {k: v for k, v in sorted(st["skips"].items()) if v}
        if st["read"] != st["written"] + sum(skipped.values()):
            raise BigtrainError(f"{f}: internal count mismatch (read {st['read']}, written {st['written']}, "
                                f"skipped {sum(skipped.values())})")
        input_rows.append({"path": str(f), "format": readers.detect_format(f), "bytes": f.stat().st_size,
                           "documents_read": st["read"], "documents_written": st["written"],
                           "documents_skipped": skipped})
    splits = {}
    for split in ("train", "heldout"):
        rows = [s for s in shards if s["split"] == split]
        splits[split] = {"shards": len(rows), "samples": sum(r["samples"] for r in rows),
                         "tokens": sum(r["tokens"] for r in rows)}
    return {"format": FORMAT, "bigtrain_version": version, "tokenizer": tok_info,
            "token_dtype": np.dtype(dtype).name, "text_field": text_field,
            "heldout_fraction": heldout_fraction, "num_shards": num_train,
            "splits": splits, "shards": shards, "inputs": input_rows,
            "totals": {"documents_read": sum(r["documents_read"] for r in input_rows),
                       "documents_written": sum(r["documents_written"] for r in input_rows),
                       "documents_skipped": sum(sum(r["documents_skipped"].values()) for r in input_rows)}}


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
