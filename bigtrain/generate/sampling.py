"""Autoregressive sampling with a KV cache: greedy (temperature 0), temperature, top-k, top-p."""

from __future__ import annotations

from typing import Collection

import torch

from bigtrain.model.llama import KVCache


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [vocab] → logits with everything outside top-k / the top-p nucleus set to -inf."""
    logits = logits.clone()
    if top_k and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p (at least one token)
        sorted_logits[remove] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(0, idx, sorted_logits)
    return logits


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, eos_id: int | Collection[int] | None = None,
             use_cache: bool = True, vocab_limit: int | None = None) -> list[int]:
    """New token ids after ``prompt`` (stops after ``eos_id``, or any of several, is produced; it is included)."""
    if not prompt:
        raise ValueError("empty prompt")
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    model.eval()
    stop = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    out: list[int] = []
    cache = KVCache() if use_cache else None
    tokens = torch.tensor([prompt], dtype=torch.long)
    step_input = tokens
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = model(step_input, kv_cache=cache)
            cache.advance(step_input.shape[1])
        else:
            logits = model(tokens)
        last = logits[0, -1].float()
        if vocab_limit is not None and vocab_limit < last.numel():
            last[vocab_limit:] = float("-inf")  # padding rows of the vocabulary are never produced
        if temperature <= 0:
            nxt = int(torch.argmax(last))
        else:
            probs = torch.softmax(filter_logits(last / temperature, top_k, top_p), dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        if nxt in stop:
            break
        step_input = torch.tensor([[nxt]], dtype=torch.long)
        tokens = torch.cat([tokens, step_input], dim=1)
    return out
