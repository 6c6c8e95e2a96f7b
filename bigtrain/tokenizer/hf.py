"""The Hugging Face ``tokenizers`` backend: a ``tokenizer.json`` (byte-level BPE as in GPT-2 / Llama 3 / Qwen,
Metaspace BPE or Unigram with byte fallback as in Llama 2, …) with the special tokens and chat template of the
``tokenizer_config.json`` / ``special_tokens_map.json`` / ``chat_template.jinja`` beside it.

Ids equal transformers' ``AutoTokenizer(...).encode(text, add_special_tokens=False)`` for a tokenizer that
transformers loads from its ``tokenizer.json`` unchanged (``PreTrainedTokenizerFast``): the post-processor's
specials are never added (bigtrain adds BOS/EOS itself when asked) and ``split_special_tokens`` is honoured.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bigtrain.errors import BigtrainError
from bigtrain.io import read_json
from bigtrain.tokenizer.base import BaseTokenizer, TokenBytes, first_line
from bigtrain.tokenizer.model import CHAT_TEMPLATE_FILE, HF_CONFIG_FILE, MODEL_FILE, chat_template_of

SPECIAL_MAP_FILE = "special_tokens_map.json"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from bytes to the printable characters byte-level BPE writes them as."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _components(node: Any) -> list[dict]:
    """A normalizer / pre-tokenizer / decoder and, for a Sequence, its parts (flattened)."""
    if not isinstance(node, dict):
        return []
    parts = node.get("normalizers") or node.get("pretokenizers") or node.get("decoders")
    if node.get("type") == "Sequence" and isinstance(parts, list):
        return [c for p in parts for c in _components(p)]
    return [node]


class HFTokenizer(BaseTokenizer):
    kind = "hf"

    def __init__(self, json_file: Path, text: str, obj: dict):
        from tokenizers import Tokenizer as HFBackend

        d = json_file.parent
        self.path = d
        self.meta = {}
        self._json_file = json_file
        self._json = text
        try:
            self._tk = HFBackend.from_str(text)
        except Exception as e:  # the Rust side raises plain Exceptions for malformed files
            raise BigtrainError(f"{json_file}: not a usable Hugging Face tokenizer ({first_line(e)})") from None
        config = read_json(d / HF_CONFIG_FILE) if (d / HF_CONFIG_FILE).is_file() else {}
        if not isinstance(config, dict):
            raise BigtrainError(f"{d / HF_CONFIG_FILE}: expected a JSON object")
        if (d / SPECIAL_MAP_FILE).is_file() and "added_tokens_decoder" not in config:
            # transformers reads special_tokens_map.json only for configs without added_tokens_decoder, over them
            special_map = read_json(d / SPECIAL_MAP_FILE)
            config = {**config, **(special_map if isinstance(special_map, dict) else {})}
        self._split_special = bool(config.get("split_special_tokens", False))
        self._tk.encode_special_tokens = self._split_special
        vocab = self._tk.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        model = obj.get("model") or {}
        self._model_unk = model.get("unk_token") if isinstance(model.get("unk_token"), str) else None
        if self._model_unk is None and isinstance(model.get("unk_id"), int):
            self._model_unk = self._tk.id_to_token(model["unk_id"])
        self.bos_id = self._config_token(config, "bos_token")
        self.eos_id = self._config_token(config, "eos_token")
        self.pad_id = self._config_token(config, "pad_token")
        self.unk_id = self._config_token(config, "unk_token", self._model_unk)
        self.chat_template = chat_template_of(d, config)
        # other named specials transformers hands a chat template
        self._more_specials = {k: str(v.get("content") if isinstance(v, dict) else v)
                               for k in ("sep_token", "cls_token", "mask_token") if (v := config.get(k))}
        self.sha256 = self._hash()

    def _config_token(self, config: dict, key: str, default: str | None = None) -> int:
        value = config.get(key, default)
        if isinstance(value, dict):
            value = value.get("content")
        if not value:
            return -1
        i = self._tk.token_to_id(str(value))
        if i is None:
            raise BigtrainError(f"{self.path / HF_CONFIG_FILE}: {key} {value!r} is not in the vocabulary of "
                                f"{self._json_file.name}")
        return int(i)

    def _hash(self) -> str:
        # The ids depend on tokenizer.json and on the special tokens the config files name, so all of them count.
        h = hashlib.sha256()
        for f in self.files():
            if f.name in (self._json_file.name, HF_CONFIG_FILE, SPECIAL_MAP_FILE):
                h.update(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
        return h.hexdigest()

    def special_tokens(self) -> dict[str, str]:
        return {**self._more_specials, **super().special_tokens()}

    # The Rust tokenizer pickles through its JSON; keep the exact text so a worker rebuilds the same object.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_tk"]
        return state

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer as HFBackend

        self.__dict__.update(state)
        self._tk = HFBackend.from_str(self._json)
        self._tk.encode_special_tokens = self._split_special

    # --- encoding -------------------------------------------------------------------------------
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._tk.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._tk.id_to_token(int(i)) or ""

    def token_to_id(self, token: str) -> int | None:
        i = self._tk.token_to_id(token)
        return None if i is None else int(i)

    def files(self) -> list[Path]:
        names = [self._json_file.name, HF_CONFIG_FILE, SPECIAL_MAP_FILE, CHAT_TEMPLATE_FILE, MODEL_FILE]
        return [self.path / n for n in names if (self.path / n).is_file()]

    def token_bytes(self) -> TokenBytes:
        import json

        obj = json.loads(self._json)
        model = obj.get("model") or {}
        parts = {k: _components(obj.get(k)) for k in ("normalizer", "pre_tokenizer", "decoder")}
        byte_level = any(c.get("type") == "ByteLevel" for cs in parts.values() for c in cs)
        space = "\u0120" if byte_level else None  # the byte-level character for a space: Ġ
        prefix = False  # does encoding put a space in front of the text?
        for c in parts["normalizer"] + parts["pre_tokenizer"]:
            t = c.get("type")
            if t == "Metaspace":
                space = c.get("replacement", "\u2581")
                scheme = c.get("prepend_scheme", "always" if c.get("add_prefix_space", True) else "never")
                prefix = prefix or scheme != "never"
            elif t == "Replace" and (c.get("pattern") or {}).get("String") == " " and space is None:
                space = c.get("content")
            elif t == "Prepend":
                prefix = True
            elif t == "ByteLevel" and c.get("add_prefix_space"):
                prefix = True
        byte_fallback = bool(model.get("byte_fallback"))
        decoder = {ch: b for b, ch in bytes_to_unicode().items()}
        added = {int(a["id"]): a for a in obj.get("added_tokens") or []}
        n = self.vocab_size
        counts = np.zeros(n, dtype=np.int64)
        leading = np.zeros(n, dtype=bool)
        for i in range(n):
            tok = self._tk.id_to_token(i)
            if tok is None or i == self.unk_id or (i in added and added[i].get("special")):
                continue
            if i in added:  # matched in the raw text, so it stands for its own characters
                counts[i] = len(added[i]["content"].encode("utf-8"))
            elif byte_fallback and _BYTE_PIECE.fullmatch(tok):
                counts[i] = 1
            elif byte_level:
                counts[i] = sum(1 if ch in decoder else len(ch.encode("utf-8")) for ch in tok)
            else:
                counts[i] = len((tok.replace(space, " ") if space else tok).encode("utf-8"))
            leading[i] = space is not None and tok.startswith(space)
        return TokenBytes(counts, leading, prefix)
