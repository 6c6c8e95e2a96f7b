"""The typed micro-batch every loader hands the model, and how packed documents become its fields.

Packed documents (``data.document_masking``, SFT packing) add ``doc_ids``: attention stays inside each
document. A position whose target is the first token of the next document (the input there is the
previous document's last token, its EOS) predicts across the boundary from nothing it may attend to, so
its label is ignored (-100), as Megatron-LM's ``--eod-mask-loss`` does: the loss of a packed micro-batch is
then exactly the token-weighted mean of its documents' own losses. With ``reset_positions`` the rotary
positions restart at 0 in each document (``position_ids``); a document cut by the window's start is a
document of its own from the window's first token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor
    """``[micro_batch, seq_len]`` int64 token ids."""
    labels: torch.Tensor
    """``[micro_batch, seq_len]`` int64 next-token targets; negative: no loss at that position."""
    doc_ids: torch.Tensor | None = None
    """``[micro_batch, seq_len]`` int32: a new document starts wherever the id changes along a row; None: one
    causal sequence per row."""
    position_ids: torch.Tensor | None = None
    """``[micro_batch, seq_len]`` int64 rotary positions; None: 0 … seq_len - 1 in every row."""

    def to(self, device) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                        for f in fields(self)})

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """The optional fields, as keyword arguments of ``SequentialModel.forward``."""
        return {k: v for k, v in (("doc_ids", self.doc_ids), ("position_ids", self.position_ids)) if v is not None}

    def pipe(self) -> tuple:
        """``(inputs, labels)`` as DeepSpeed's pipeline engine loads them: the first stage's input is the
        token ids alone or the tuple that then travels between stages."""
        return batch_inputs(self.input_ids, self.doc_ids, self.position_ids), self.labels


def batch_inputs(tokens: torch.Tensor, doc_ids: torch.Tensor | None, position_ids: torch.Tensor | None):
    """The first layer's input: token ids alone, or (token ids, doc_ids[, position_ids])."""
    if position_ids is not None and doc_ids is None:
        raise ValueError("position_ids need doc_ids (positions restart per document)")
    if doc_ids is None:
        return tokens
    return (tokens, doc_ids) if position_ids is None else (tokens, doc_ids, position_ids)


def window_batch(windows: np.ndarray, starts: Sequence[np.ndarray] | None = None,
                 reset_positions: bool = False) -> Batch:
    """A batch of packed windows ``[micro_batch, seq_len + 1]``; ``starts[r]``: the offsets in window ``r``
    (within ``1 … seq_len``) where a document begins. Without ``starts``: plain causal rows."""
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    if starts is None:
        return Batch(torch.from_numpy(x), torch.from_numpy(y))
    b, n = windows.shape
    begins = np.zeros((b, n), dtype=bool)
    for r, s in enumerate(starts):
        begins[r, np.asarray(s, dtype=np.int64)] = True
    docs = np.cumsum(begins, axis=1, dtype=np.int32)
    y = np.where(docs[:, 1:] != docs[:, :-1], IGNORE_INDEX, y)
    pos = None
    if reset_positions:
        t = np.broadcast_to(np.arange(n - 1, dtype=np.int64), (b, n - 1))
        pos = torch.from_numpy(t - np.maximum.accumulate(np.where(begins[:, :-1], t, 0), axis=1))
    return Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(np.ascontiguousarray(docs[:, :-1])), pos)
