"""Supervised fine-tuning data: jsonl examples → token ids with a loss mask → packed (or padded) batches.

An example is rendered turn by turn with the chat template (``bigtrain.finetune.config.TEMPLATES``). The
prompt side (system and user turns, ``assistant_prefix``) is encoded as one piece of text per assistant
turn and carries no loss; each assistant turn (its content and ``assistant_suffix``, then EOS) carries
loss. Labels are ``-100`` wherever the *target* token is prompt, so ``lm_loss`` ignores them.

Batches (:class:`~bigtrain.data.batch.Batch`): with ``sft.pack`` several examples share a sequence of
``model.seq_len`` positions and ``doc_ids`` numbers them (1, 2, … per example, 0 for the padding), so the model
attends only within an example (``bigtrain.model.attention``). Without packing, one example per row,
right-padded. Row order: examples are shuffled per epoch by a
seeded permutation and packed greedily in that order, so sample ``i`` (and the resume position) depends
only on (examples, seq_len, seed, i), the same contract as the pretraining loader.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain.data.batch import IGNORE_INDEX, Batch
from bigtrain.errors import BigtrainError
from bigtrain.finetune.config import SFTConfig

ROLES = ("system", "user", "assistant")


def read_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    """Examples as message lists; raise BigtrainError naming the line of any bad record."""
    p = Path(path)
    if not p.is_file():
        raise BigtrainError(f"sft data {p}: no such file")
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise BigtrainError(f"{p}:{n}: not valid JSON") from None
            out.append(to_messages(rec, f"{p}:{n}"))
    if not out:
        raise BigtrainError(f"{p}: no examples")
    return out


def to_messages(rec: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(rec, dict):
        raise BigtrainError(f"{where}: expected a JSON object with prompt/response or messages")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise BigtrainError(f"{where}: messages must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BigtrainError(f"{where}: each message needs role (system, user or assistant) and string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise BigtrainError(f"{where}: no assistant message to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str):
        return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}]
    raise BigtrainError(f"{where}: expected string fields prompt and response, or messages")


def encode_example(messages: list[dict[str, str]], tok, cfg: SFTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, trainable mask) of one example."""
    if cfg.uses_tokenizer_template(tok):
        return encode_with_chat_template(messages, tok)
    fmt = cfg.formats()
    ids: list[int] = [tok.bos_id] if cfg.bos else []
    train: list[bool] = [False] * len(ids)
    pending = ""
    for m in messages:
        if m["role"] == "assistant":
            prompt_ids = tok.encode(pending + fmt["assistant_prefix"]) if (pending + fmt["assistant_prefix"]) else []
            pending = ""
            reply = tok.encode(m["content"] + fmt["assistant_suffix"]) + ([tok.eos_id] if cfg.eos else [])
            ids += prompt_ids + reply
            train += [False] * len(prompt_ids) + [True] * len(reply)
        else:
            pending += fmt[f"{m['role']}_format"].replace("{content}", m["content"])
    return np.array(ids, dtype=np.int64), np.array(train, dtype=bool)


def encode_with_chat_template(messages: list[dict[str, str]], tok) -> tuple[np.ndarray, np.ndarray]:
    """The tokenizer's template renders the conversation; each assistant turn is the text its message adds to
    the rendering of the turns before it with the generation prompt (so the generation prompt is prompt side).
    The template places BOS, end-of-turn and EOS tokens itself."""
    ids: list[int] = []
    train: list[bool] = []
    done = ""
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:k], add_generation_prompt=True)
        full = tok.apply_chat_template(messages[:k + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise BigtrainError(f"tokenizer {tok.path}: its chat template does not render a conversation as a "
                                "prefix of its continuation; prompt tokens cannot be told from response tokens "
                                "(choose sft.template=plain, chatml or llama2)")
        head, reply = tok.encode(prompt[len(done):]), tok.encode(full[len(prompt):])
        ids += head + reply
        train += [False] * len(head) + [True] * len(reply)
        done = full
    rest = tok.apply_chat_template(messages)[len(done):] if done else tok.apply_chat_template(messages)
    tail = tok.encode(rest) if rest else []
    return np.array(ids + tail, dtype=np.int64), np.array(train + [False] * len(tail), dtype=bool)


def encode_prompt(messages: list[dict[str, str]], tok, cfg: SFTConfig) -> list[int]:
    """Token ids to generate the next assistant turn from (the messages so far, then assistant_prefix)."""
    if cfg.uses_tokenizer_template(tok):
        return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    fmt = cfg.formats()
    ids, pending = ([tok.bos_id] if cfg.bos else []), ""
    for m in messages:
        if m["role"] == "assistant":
            ids += tok.encode(pending + fmt["assistant_prefix"]) if (pending + fmt["assistant_prefix"]) else []
            pending = ""
            ids += tok.encode(m["content"] + fmt["assistant_suffix"]) + ([tok.eos_id] if cfg.eos else [])
        else:
            pending += fmt[f"{m['role']}_format"].replace("{content}", m["content"])
    text = pending + fmt["assistant_prefix"]
    return ids + (tok.encode(text) if text else [])


def pairs(ids: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one example: labels[i] = ids[i+1] where that target is trainable, else -100."""
    return ids[:-1], np.where(train[1:], ids[1:], IGNORE_INDEX)


@dataclass
class Encoded:
    inputs: list[np.ndarray]
    labels: list[np.ndarray]
    truncated: int
    fingerprint: str


def encode_all(examples: list[list[dict[str, str]]], tok, cfg: SFTConfig, seq_len: int, where: str) -> Encoded:
    inputs, labels, truncated = [], [], 0
    h = hashlib.sha256()
    for n, msgs in enumerate(examples):
        ids, train = encode_example(msgs, tok, cfg)
        if len(ids) > seq_len + 1:
            if not cfg.truncate:
                raise BigtrainError(f"{where}: example {n + 1} has {len(ids)} tokens, more than model.seq_len+1 = "
                                    f"{seq_len + 1} (set sft.truncate=true to cut it)")
            ids, train = ids[:seq_len + 1], train[:seq_len + 1]
            truncated += 1
        x, y = pairs(ids, train)
        if len(x) == 0 or not (y >= 0).any():
            continue  # nothing to learn from (e.g. the response was truncated away)
        inputs.append(x)
        labels.append(y)
        h.update(ids.tobytes() + train.tobytes())
    if not inputs:
        raise BigtrainError(f"{where}: no example has a response token within model.seq_len={seq_len}")
    return Encoded(inputs, labels, truncated, h.hexdigest()[:16])


class SFTLoader:
    """Deterministic, resumable, data-parallel loader of SFT rows (same sample-order contract as pretraining)."""

    def __init__(self, enc: Encoded, seq_len: int, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 sft: SFTConfig, pad_id: int, shuffle: bool = True):
        self.enc, self.seq_len, self.pack, self.pad_id = enc, seq_len, sft.pack, max(pad_id, 0)
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.sft = sft
        self.consumed = 0
        self._epochs: OrderedDict[int, list[list[int]]] = OrderedDict()

    # --- rows -------------------------------------------------------------------------------------
    def epoch_rows(self, epoch: int) -> list[list[int]]:
        rows = self._epochs.get(epoch)
        if rows is None:
            n = len(self.enc.inputs)
            order = np.random.default_rng([self.seed, 7, epoch]).permutation(n) if self.shuffle else np.arange(n)
            rows, cur, used = [], [], 0
            for i in order.tolist():
                length = len(self.enc.inputs[i])
                if cur and (not self.pack or used + length > self.seq_len):
                    rows.append(cur)
                    cur, used = [], 0
                cur.append(i)
                used += length
            if cur:
                rows.append(cur)
            self._epochs[epoch] = rows
            if len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return rows

    def row_examples(self, index: int) -> list[int]:
        epoch = 0
        while True:
            rows = self.epoch_rows(epoch)
            if index < len(rows):
                return rows[index]
            index -= len(rows)
            epoch += 1

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, segment ids, labels) of global row ``index``, each ``seq_len`` long."""
        s = self.seq_len
        tokens = np.full(s, self.pad_id, dtype=np.int64)
        segs = np.zeros(s, dtype=np.int64)
        labels = np.full(s, IGNORE_INDEX, dtype=np.int64)
        pos = 0
        for k, i in enumerate(self.row_examples(index), 1):
            x, y = self.enc.inputs[i], self.enc.labels[i]
            tokens[pos:pos + len(x)] = x
            labels[pos:pos + len(x)] = y
            segs[pos:pos + len(x)] = k
            pos += len(x)
        return tokens, segs, labels

    def sample_id(self, index: int) -> str:
        return "sft:" + ",".join(str(i) for i in self.row_examples(index))

    # --- Loader -----------------------------------------------------------------------------------
    def indices(self) -> range:
        start = self.consumed + self.dp_rank * self.micro_batch_size
        return range(start, start + self.micro_batch_size)

    def next_batch(self) -> Batch:
        rows = [self.row(i) for i in self.indices()]
        self.consumed += self.micro_batch_size * self.dp_size
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]))
        labels = torch.from_numpy(np.stack([r[2] for r in rows]))
        docs = torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.int32)) if self.pack else None
        return Batch(tokens, labels, docs)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_samples": self.consumed, "sft_examples": self.enc.fingerprint, "sft": self.sft.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("sft_examples")
        if saved and saved != self.enc.fingerprint:
            raise BigtrainError("the checkpoint was fine-tuned on other SFT examples (or another template/tokenizer) "
                                "than this run's; use a new --run-dir")
        self.consumed = int(state["consumed_samples"])
