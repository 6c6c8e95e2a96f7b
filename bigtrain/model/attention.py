"""Attention over packed documents: a token attends only to earlier tokens of its own document.

A micro-batch's document layout is ``doc_ids`` ``[batch, seq]`` (integers; a document starts wherever the id
changes from one position to the next). A plan is made from it once per micro-batch (per pipeline stage:
every layer of the stage reuses it, see :func:`document_plan`) and picks a kernel by device:

* CPU, ``spans``: the layout's runs ``(row, start, end)``, each attended with SDPA's own causal kernel on
  its slice. Exact (no masked-out score is ever computed, so nothing depends on a fill value), nothing of
  size ``seq × seq`` is built, and a micro-batch of one document per row is one plain causal call.
  FlexAttention is not an option here: torch refuses its backward on CPU.
* CUDA, ``flex``: a FlexAttention ``BlockMask`` (causal ∧ same document ∧ sliding window) and the compiled
  flex kernel: flash-level memory, and blocks that lie outside every document are skipped.

Without document ids nothing here runs: attention takes the plain causal SDPA call (flash on GPU).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKEND_ENV = "BIGTRAIN_DOC_ATTENTION"  # spans | flex: overrides the choice by device (tests, benchmarks)


@dataclass
class SpanPlan:
    runs: list[list[tuple[int, int]]]  # per row: (start, end) of each document
    single: bool  # every row is one document: one causal call


@dataclass
class FlexPlan:
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask


def run_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` document numbers 0, 1, … per row: a new number wherever ``doc_ids`` changes."""
    change = torch.zeros_like(doc_ids, dtype=torch.int32)
    change[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).to(torch.int32)
    return change.cumsum(dim=1, dtype=torch.int32)


def _backend(device: torch.device) -> str:
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        return chosen
    return "flex" if device.type == "cuda" else "spans"


def _span_plan(doc_ids: torch.Tensor) -> SpanPlan:
    b, s = doc_ids.shape
    bounds = (doc_ids[:, 1:] != doc_ids[:, :-1]).nonzero().tolist()  # one host sync per micro-batch
    cuts: list[list[int]] = [[0] for _ in range(b)]
    for row, col in bounds:
        cuts[row].append(col + 1)
    runs = [[(a, e) for a, e in zip(c, c[1:] + [s])] for c in cuts]
    return SpanPlan(runs, single=not bounds)


def _flex_plan(doc_ids: torch.Tensor, window: int | None) -> FlexPlan:
    from torch.nn.attention.flex_attention import create_block_mask

    docs = run_ids(doc_ids)
    b, s = docs.shape

    def mask_mod(bi, h, q, kv):
        keep = (docs[bi, q] == docs[bi, kv]) & (kv <= q)
        return keep & (q - kv < window) if window else keep

    return FlexPlan(create_block_mask(mask_mod, b, None, s, s, device=doc_ids.device))


_cache: tuple[torch.Tensor, int, int | None, str, object] | None = None


def document_plan(doc_ids: torch.Tensor, window: int | None) -> SpanPlan | FlexPlan:
    """The plan for ``doc_ids``, made once: layers of one stage receive the same tensor object, so a
    one-entry cache keyed by identity (and version) serves every layer of the micro-batch."""
    global _cache
    backend = _backend(doc_ids.device)
    c = _cache
    if c is not None and c[0] is doc_ids and c[1] == doc_ids._version and c[2] == window and c[3] == backend:
        return c[4]
    if backend == "spans":
        plan = _span_plan(doc_ids)
    elif backend == "flex":
        plan = _flex_plan(doc_ids, window)
    else:
        raise ValueError(f"{BACKEND_ENV}={backend!r}: expected spans or flex")
    _cache = (doc_ids, doc_ids._version, window, backend, plan)
    return plan


def _window_mask(n: int, window: int | None, device) -> torch.Tensor | None:
    if not window or n <= window:
        return None
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    mask = _window_mask(q.shape[2], window, q.device)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled, flex_attention materialises the scores; the compiled kernel is the flash-like one.
    return torch.compile(flex_attention, dynamic=False)


def document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SpanPlan | FlexPlan,
                       window: int | None = None, compiled: bool | None = None) -> torch.Tensor:
    """Causal attention of ``q, k, v`` ``[batch, heads, seq, head_dim]`` (GQA allowed) within documents."""
    if isinstance(plan, FlexPlan):
        from torch.nn.attention.flex_attention import flex_attention

        fn = _compiled_flex() if (q.is_cuda if compiled is None else compiled) else flex_attention
        return fn(q, k, v, block_mask=plan.block_mask, enable_gqa=True)
    if plan.single:
        return _causal(q, k, v, window)
    rows = []
    for r, runs in enumerate(plan.runs):
        if len(runs) == 1:
            rows.append(_causal(q[r:r + 1], k[r:r + 1], v[r:r + 1], window))
            continue
        rows.append(torch.cat([_causal(q[r:r + 1, :, a:e], k[r:r + 1, :, a:e], v[r:r + 1, :, a:e], window)
                               for a, e in runs], dim=2))
    return torch.cat(rows, dim=0)
