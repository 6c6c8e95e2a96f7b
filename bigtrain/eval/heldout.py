"""Held-out loss, perplexity and bits-per-byte.

Definitions (one evaluation = a set of windows of ``seq_len + 1`` tokens; every token after the first of a
window is a target, predicted from the tokens before it in that window):

* ``loss``  = total nats over the target tokens / number of target tokens (mean next-token cross-entropy)
* ``ppl``   = exp(loss)
* ``bpb``   = total nats / (ln 2 × total UTF-8 bytes of the text the target tokens encode)

The bytes a token encodes come from the tokenizer (not from the data), so bits-per-byte compares models
with different tokenizers (``Tokenizer.token_bytes``): a normal piece encodes the UTF-8 bytes of its text
(``▁`` is one space; a byte-level BPE token is mapped back through GPT-2's byte table), a byte-fallback piece
``<0xNN>`` one byte, special tokens (BOS, EOS, pad) and ``<unk>`` none, and the first piece of a document (a
token right after EOS or BOS) loses the one space a dummy prefix added (sentencepiece, Metaspace). Summed over
a document's tokens this is exactly ``len(text.encode("utf-8"))`` of the document for tokenizers that decode
back to the text (no normalisation), which ``tests/unit/test_eval_bpb.py`` checks for each kind.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from bigtrain.errors import BigtrainError

LN2 = math.log(2.0)


class ByteCounter:
    """UTF-8 bytes encoded by target tokens, for one tokenizer (either backend: see ``token_bytes``)."""

    def __init__(self, tok):
        tb = tok.token_bytes()
        self.table, self.leading_space, self.dummy_prefix = tb.counts, tb.leading_space, tb.prefix_space
        self.doc_starts = np.array(sorted({tok.eos_id, tok.bos_id} - {-1}), dtype=np.int64)
        self.vocab_size = tok.vocab_size

    def target_bytes(self, window: np.ndarray) -> int:
        """Bytes encoded by ``window[1:]`` (the targets of one window)."""
        w = np.asarray(window, dtype=np.int64)
        if w.size and (w.max() >= self.vocab_size or w.min() < 0):
            raise BigtrainError(f"token id {int(w.max())} is outside the tokenizer's vocabulary of {self.vocab_size}")
        targets, prev = w[1:], w[:-1]
        total = int(self.table[targets].sum())
        if self.dummy_prefix:
            starts = np.isin(prev, self.doc_starts) & self.leading_space[targets]
            total -= int(starts.sum())
        return total

    def document_bytes(self, ids: list[int]) -> int:
        """Bytes of one document's token ids (as if preceded by EOS)."""
        eos = int(self.doc_starts[0]) if self.doc_starts.size else 0
        return self.target_bytes(np.array([eos, *ids], dtype=np.int64))


def summarize(nats: float, tokens: int, nbytes: int | None) -> dict[str, Any]:
    loss = nats / max(tokens, 1)
    out: dict[str, Any] = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(tokens)}
    if nbytes:
        out["bytes"] = int(nbytes)
        out["bpb"] = nats / (LN2 * nbytes)
    return out


@torch.no_grad()
def window_nats(model, windows: torch.Tensor) -> torch.Tensor:
    """Per-window summed cross-entropy (nats, float64) of a [batch, seq_len + 1] tensor on a plain model."""
    inputs, labels = windows[:, :-1], windows[:, 1:]
    logits = model(inputs).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return ce.view(labels.shape).double().sum(dim=1)


@torch.no_grad()
def evaluate_windows(model, windows: Iterable[np.ndarray], counter: ByteCounter | None, batch_size: int = 8,
                     progress=None) -> dict[str, Any]:
    """Loss / ppl / bpb of a single-process model over ``windows`` (each ``seq_len + 1`` token ids)."""
    nats, tokens, nbytes = 0.0, 0, 0
    batch: list[np.ndarray] = []

    def flush():
        nonlocal nats, tokens
        t = torch.from_numpy(np.stack(batch).astype(np.int64))
        nats += float(window_nats(model, t).sum())
        tokens += t.shape[0] * (t.shape[1] - 1)
        batch.clear()
        if progress:
            progress(tokens)

    for w in windows:
        if counter is not None:
            nbytes += counter.target_bytes(w)
        batch.append(np.asarray(w))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return summarize(nats, tokens, nbytes if counter is not None else None)


def heldout_source(data_dir: str, split: str, seq_len: int, vocab_size: int):
    """The split's windows in stream order (no shuffling): window i = stream tokens [i·L, (i+1)·L]."""
    from pathlib import Path

    from bigtrain.data.shard_source import ShardWindowSource
    from bigtrain.data.shards import is_dataset_dir

    if not Path(data_dir).is_dir():
        raise BigtrainError(f"--data {data_dir}: no such dataset directory")
    if not is_dataset_dir(data_dir):
        raise BigtrainError(f"--data {data_dir}: no manifest.json (run `bigtrain preprocess` to completion first)")
    if split not in ("train", "heldout"):
        raise BigtrainError(f"--split {split}: expected train or heldout")
    return ShardWindowSource(data_dir, seq_len, seed=0, split=split, shuffle_buffer=0, vocab_size=vocab_size)
