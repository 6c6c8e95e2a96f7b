"""What both tokenizer backends share: bos/eos handling, the EOS override, chat templates, the manifest record.

A backend (:class:`~bigtrain.tokenizer.model.SentencePieceTokenizer`,
:class:`~bigtrain.tokenizer.hf.HFTokenizer`) sets ``path``, ``kind``, ``meta``, ``vocab_size``, the special ids
(``-1`` when absent), ``sha256`` and ``chat_template``, and implements ``_encode_batch``, ``decode``,
``id_to_piece``, ``token_to_id``, ``token_bytes`` and ``files``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bigtrain.errors import BigtrainError

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class TokenBytes:
    """The UTF-8 bytes each token id stands for, as bits-per-byte counts them.

    ``counts[i]``: bytes of token ``i``'s text (a byte-fallback token is one byte, special tokens none).
    ``prefix_space``: the tokenizer puts one space (``▁``) in front of every document that the decoded text
    does not have; the first token of a document then stands for one byte less when ``leading_space[i]``.
    """

    counts: np.ndarray
    leading_space: np.ndarray
    prefix_space: bool


class BaseTokenizer:
    kind: str = ""
    path: Path | None = None
    meta: dict
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    sha256: str
    chat_template: str | None = None

    # --- backend ------------------------------------------------------------------------------
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def id_to_piece(self, i: int) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def token_bytes(self) -> TokenBytes:
        raise NotImplementedError

    def files(self) -> list[Path]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def generation_config_file(self) -> Path | None:
        """The generation_config.json an imported model brought, kept beside the tokenizer's files."""
        found = [d / GENERATION_CONFIG for d in {f.parent for f in self.files()} if (d / GENERATION_CONFIG).is_file()]
        return found[0] if found else None

    def carried_files(self) -> list[Path]:
        """What a checkpoint's copy of the tokenizer holds: its files and the model's generation config."""
        gen = self.generation_config_file()
        return self.files() + ([gen] if gen else [])

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.encode_batch([text], bos, eos)[0]

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        out = self._encode_batch(list(texts))
        if bos or eos:
            head = [self._special("bos")] if bos else []
            tail = [self._special("eos")] if eos else []
            out = [head + ids + tail for ids in out]
        return out

    def _special(self, name: str) -> int:
        i = getattr(self, f"{name}_id")
        if i < 0:
            raise BigtrainError(f"{self.path}: the tokenizer has no {name.upper()} token")
        return i

    def with_eos(self, token: str):
        """A copy whose EOS is ``token`` (for tokenizers that name none, e.g. ``--eos-token``)."""
        i = self.token_to_id(token)
        if i is None:
            raise BigtrainError(f"EOS token {token!r} is not in the vocabulary of {self.path}")
        new = copy.copy(self)
        new.eos_id = i
        return new

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token / unk_token / pad_token strings, as chat templates see them."""
        return {f"{name}_token": self.id_to_piece(i) for name in ("bos", "eos", "unk", "pad")
                if (i := getattr(self, f"{name}_id")) >= 0}

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation rendered by the tokenizer's own jinja chat template, as transformers renders it."""
        if not self.chat_template:
            raise BigtrainError(f"{self.path}: the tokenizer has no chat template")
        return render_chat_template(self.chat_template, messages, add_generation_prompt, self.special_tokens())

    def info(self) -> dict:
        """What a dataset manifest or checkpoint records about the tokenizer."""
        return {"kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, vocab_size={self.vocab_size}, "
                f"sha256={self.sha256[:12]})")


def first_line(e: BaseException) -> str:
    """An exception's message fit for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------- chat templates
@lru_cache(maxsize=8)
def _compile(template: str):
    # The environment transformers' apply_chat_template uses, so a template renders the same in both.
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime

        return datetime.now().strftime(fmt)

    class Generation(jinja2.ext.Extension):
        # transformers tracks assistant spans with {% generation %}; rendering only needs the body
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def render_chat_template(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                         special_tokens: dict[str, str]) -> str:
    import jinja2

    # transformers drops None-valued keys (content=None from chat APIs) before rendering
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise BigtrainError(f"chat template: {first_line(e)}") from None
