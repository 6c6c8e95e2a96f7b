"""Measure the model-state bytes a rank really holds: parameters, gradients and optimizer state.

Storages are deduplicated by ``data_ptr`` (views of one flat buffer count once) and classified by the
first owner that reaches them, in this order: the parameters (including ZeRO-3's partitions
``ds_tensor``), the optimizer (its ``state`` and every tensor attribute of DeepSpeed's ZeRO / bf16
wrappers, except communication buckets), the gradients; DeepSpeed's bucket buffers are reported
separately as ``buffers`` and every other live tensor found by the garbage collector as ``other``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import torch

# Attributes of DeepSpeed's optimizer wrappers that hold communication buffers, not model state.
_BUFFER_HINTS = ("ipg", "bucket", "buffer", "comm", "allgather", "reduce_scatter", "_pad")
# Attributes that hold (views of) gradients.
_GRAD_HINTS = ("grad",)


def _tensors(obj: Any, depth: int = 0, seen: set | None = None) -> Iterator[torch.Tensor]:
    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        ds = getattr(obj, "ds_tensor", None)
        if isinstance(ds, torch.Tensor):
            yield ds
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors(v, depth + 1, seen)


def _key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.data_ptr() == 0 or st.nbytes() == 0 or t.device.type == "meta":
        return None
    return st.data_ptr(), st.nbytes()


def model_state_bytes(engine) -> dict[str, int]:
    """Bytes per category on this rank: params, grads, optimizer, buffers, other (all live tensors not
    reached from the engine) and ``model_state`` = params + grads + optimizer."""
    counted: dict[int, str] = {}
    sizes: dict[int, int] = {}

    def add(t: torch.Tensor, cat: str) -> None:
        k = _key(t)
        if k is None or k[0] in counted:
            return
        counted[k[0]] = cat
        sizes[k[0]] = k[1]

    module = engine.module
    params = list(module.parameters())
    for p in params:
        add(p, "params")
        ds = getattr(p, "ds_tensor", None)
        if isinstance(ds, torch.Tensor):
            add(ds, "params")
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    for v in getattr(inner, "state", {}).values():
        for t in _tensors(v):
            add(t, "optimizer")
    wrappers = [o for o in (opt, getattr(engine, "zero_optimizer", None)) if o is not None and o is not inner]
    for w in wrappers:
        for name, val in vars(w).items():
            low = name.lower()
            cat = ("grads" if any(h in low for h in _GRAD_HINTS) else
                   "buffers" if any(h in low for h in _BUFFER_HINTS) else "optimizer")
            for t in _tensors(val):
                add(t, cat)
    for p in params:
        if p.grad is not None:
            add(p.grad, "grads")
    import warnings

    with warnings.catch_warnings():  # isinstance() on some lazily-imported modules' objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                is_t = isinstance(obj, torch.Tensor)
            except ReferenceError:
                continue
            if is_t:
                add(obj, "other")
    out = {c: 0 for c in ("params", "grads", "optimizer", "buffers", "other")}
    for ptr, cat in counted.items():
        out[cat] += sizes[ptr]
    out["model_state"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def train_and_measure(engine, steps: int, micro_batch: int, seq_len: int, vocab: int, gas: int = 1
                      ) -> dict[str, int]:
    """Run ``steps`` optimizer steps on random tokens (PP = 1, ``gas`` ≥ 2 micro-batches a step), then the
    first micro-batch of one more step, and measure there: parameters, gradients and optimizer state live."""
    if gas < 2:
        raise ValueError("measure with gradient accumulation (gas >= 2): mid-accumulation every state is live")
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randint(0, vocab, (micro_batch, seq_len), generator=gen)
        return x, torch.roll(x, -1, dims=1)

    for _ in range(steps):
        for _ in range(gas):
            x, y = batch()
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
    # The first micro-batch of the next step: gradients are being accumulated (full under ZeRO 0/1,
    # reduced into this rank's partition under ZeRO 2/3), parameters and optimizer state are live.
    x, y = batch()
    loss = engine(x, y)
    engine.backward(loss)
    del loss
    gc.collect()
    return model_state_bytes(engine)


def main(argv: list[str] | None = None) -> None:
    """``python -m bigtrain.plan.measure CONFIG [key=value ...] --out FILE``, once per
    rank under torchrun: builds the engine exactly as training does (``build_engine``), measures, and
    rank 0 writes every rank's numbers to FILE as JSON."""
    import argparse
    import json
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args(argv)

    import torch.distributed as dist

    from bigtrain.config.job import load_job_config
    from bigtrain.train import trainer

    job = load_job_config(args.config, args.overrides)
    built = trainer.build_engine(job)
    t, dp = job.train, built.topo.dp
    gas = t.global_batch_size // (t.micro_batch_size * dp)
    got = train_and_measure(built.engine, args.steps, t.micro_batch_size, job.model.seq_len,
                            job.model.vocab_size, gas)
    got.update(rank=built.info.rank, tp_rank=built.topo.tp_rank, pp_rank=built.topo.pp_rank, dp_rank=built.topo.dp_rank,
               optimizer_class=type(built.engine.optimizer).__name__)
    rows = [None] * built.info.world_size
    dist.all_gather_object(rows, got)
    if built.info.rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": built.info.world_size, "ranks": rows}, f, indent=1)
    from bigtrain.parallel.topology import teardown

    teardown()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
