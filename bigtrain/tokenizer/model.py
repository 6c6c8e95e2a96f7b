"""Read a tokenizer directory written by ``bigtrain tokenizer train``.

A tokenizer directory holds ``tokenizer.model`` (a sentencepiece model with byte fallback) and
``tokenizer.json`` (metadata: vocab size, special ids, the model file's sha256). Preprocessing,
training, generation and the Hugging Face export all read it through :func:`load_tokenizer`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

from bigtrain.errors import BigtrainError
from bigtrain.io import read_json

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"

# Special ids, fixed for every bigtrain tokenizer (the Llama convention, plus a pad piece).
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tokenizer:
    """A loaded sentencepiece tokenizer with bigtrain's metadata."""

    def __init__(self, model_bytes: bytes, meta: dict | None = None, path: str | Path | None = None):
        import sentencepiece as spm

        self.model_bytes = model_bytes
        self.path = Path(path) if path is not None else None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise BigtrainError(f"{self.path or 'tokenizer'}: not a sentencepiece model ({e})") from None
        self.meta = dict(meta or {})
        self.sha256 = sha256_bytes(model_bytes)
        self.vocab_size = int(self.sp.GetPieceSize())
        self.unk_id = int(self.sp.unk_id())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        self.pad_id = int(self.sp.pad_id())

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.EncodeAsIds(text)
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        out = self.sp.EncodeAsIds(list(texts))
        for ids in out:
            if bos:
                ids.insert(0, self.bos_id)
            if eos:
                ids.append(self.eos_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def pieces(self) -> list[str]:
        return [self.sp.IdToPiece(i) for i in range(self.vocab_size)]

    def info(self) -> dict:
        """What a dataset manifest or checkpoint records about the tokenizer."""
        return {"sha256": self.sha256, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "model_type": self.meta.get("model_type")}

    def __repr__(self) -> str:
        return f"Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer directory (or a bare ``.model`` file); raise BigtrainError if unusable."""
    p = Path(path)
    if p.is_dir():
        model, meta_file = p / MODEL_FILE, p / META_FILE
    elif p.is_file():
        model, meta_file = p, p.with_name(META_FILE)
    else:
        raise BigtrainError(f"{p}: tokenizer directory not found (make one with `bigtrain tokenizer train`)")
    if not model.is_file():
        raise BigtrainError(f"{p}: no {MODEL_FILE} in tokenizer directory")
    meta = {}
    if meta_file.is_file():
        meta = read_json(meta_file)
    tok = Tokenizer(model.read_bytes(), meta, p)
    if meta.get("sha256") and meta["sha256"] != tok.sha256:
        raise BigtrainError(f"{model}: sha256 {tok.sha256[:12]}… does not match {meta_file} "
                            f"({meta['sha256'][:12]}…); the directory was modified")
    return tok
