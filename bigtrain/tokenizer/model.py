"""Load a tokenizer: bigtrain's sentencepiece directories, foreign sentencepiece models, Hugging Face tokenizers,
and the tokenizer a bigtrain checkpoint carries.

A directory written by ``bigtrain tokenizer train`` holds ``tokenizer.model`` (a sentencepiece model with byte
fallback) and ``tokenizer.json`` (bigtrain's metadata: ``"type": "sentencepiece"``, vocab size, special ids, the
model file's sha256, what it was trained on). Hugging Face uses the same file name ``tokenizer.json`` for its
own format (a JSON object with a ``"model"`` key), so the two are told apart by content; a Hugging Face directory
that has both ``tokenizer.json`` and ``tokenizer.model`` is read through ``tokenizer.json``, as transformers'
AutoTokenizer does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from bigtrain.errors import BigtrainError
from bigtrain.io import read_json
from bigtrain.tokenizer.base import BaseTokenizer, TokenBytes

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_CONFIG_FILE = "tokenizer_config.json"

# Special ids, fixed for every tokenizer bigtrain trains (the Llama convention, plus a pad piece).
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chat_template_of(directory: Path, config: dict | None = None) -> str | None:
    """The chat template stored with a tokenizer: ``chat_template.jinja`` wins over ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of named templates of which "default" is used), as in transformers."""
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if config is None:
        config = read_json(directory / HF_CONFIG_FILE) if (directory / HF_CONFIG_FILE).is_file() else {}
    t = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) and t else None


class SentencePieceTokenizer(BaseTokenizer):
    """A sentencepiece model (bigtrain's own with its metadata, or a foreign ``tokenizer.model``)."""

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, meta: dict | None = None, path: str | Path | None = None,
                 files: list[Path] | None = None, chat_template: str | None = None):
        self.model_bytes = model_bytes
        self.path = Path(path) if path is not None else None
        self.meta = dict(meta or {})
        self._files = list(files or [])
        self.chat_template = chat_template
        self._load()
        self.sha256 = sha256_bytes(model_bytes)
        self.vocab_size = int(self.sp.GetPieceSize())
        self.unk_id = int(self.sp.unk_id())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        self.pad_id = int(self.sp.pad_id())

    def _load(self) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except (RuntimeError, OSError) as e:
            raise BigtrainError(f"{self.path or 'tokenizer'}: not a sentencepiece model ({e})") from None

    # The processor is a C++ object; Ray ships tokenizers to workers by pickling, so rebuild it from the bytes.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["sp"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    # --- encoding -------------------------------------------------------------------------------
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.EncodeAsIds(texts, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def token_to_id(self, token: str) -> int | None:
        i = int(self.sp.PieceToId(token))
        return i if self.sp.IdToPiece(i) == token else None

    def pieces(self) -> list[str]:
        return [self.sp.IdToPiece(i) for i in range(self.vocab_size)]

    def token_bytes(self) -> TokenBytes:
        # A normal piece is the UTF-8 of its text (▁ is one space), a byte piece <0xNN> one byte, control pieces
        # and <unk> none; sentencepiece's dummy prefix puts a ▁ in front of every text.
        sp, n = self.sp, self.vocab_size
        counts = np.zeros(n, dtype=np.int64)
        leading = np.zeros(n, dtype=bool)
        for i in range(n):
            if sp.IsControl(i) or sp.IsUnknown(i):
                continue
            if sp.IsByte(i):
                counts[i] = 1
                continue
            piece = sp.IdToPiece(i)
            counts[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
            leading[i] = piece.startswith("\u2581")
        probe = sp.EncodeAsPieces("a")
        return TokenBytes(counts, leading, bool(probe) and probe[0].startswith("\u2581"))

    def files(self) -> list[Path]:
        return list(self._files)

    def info(self) -> dict:
        return {**super().info(), "model_type": self.meta.get("model_type")}


Tokenizer = SentencePieceTokenizer  # the name callers used before there were two backends


# ------------------------------------------------------------------------------------------- loading
def load_tokenizer(path: str | Path) -> BaseTokenizer:
    """A tokenizer from a bigtrain tokenizer directory, a bare sentencepiece ``.model`` file, a Hugging Face model
    or tokenizer directory (or its ``tokenizer.json``), or a bigtrain checkpoint or run directory (the tokenizer it
    carries). Raises BigtrainError in one line when the path is none of these."""
    return _load(Path(path), follow_checkpoint=True)


def _load(p: Path, follow_checkpoint: bool) -> BaseTokenizer:
    if p.is_file():
        if p.suffix == ".json":
            return _load_json_file(p)
        return _load_sentencepiece(p, p.parent, _sp_meta(p.parent / META_FILE), path=p)
    if not p.is_dir():
        raise BigtrainError(f"{p}: tokenizer not found (make one with `bigtrain tokenizer train`, or give a "
                            "Hugging Face tokenizer directory)")
    if (p / META_FILE).is_file():
        return _load_json_file(p / META_FILE)
    if (p / MODEL_FILE).is_file():
        return _load_sentencepiece(p / MODEL_FILE, p, path=p)
    if follow_checkpoint and ((p / "bigtrain.json").is_file() or (p / "checkpoints").is_dir()):
        return _load_from_checkpoint(p)
    raise BigtrainError(f"{p}: not a tokenizer: no tokenizer.model or tokenizer.json (expected a bigtrain "
                        "tokenizer, a Hugging Face tokenizer directory, or a bigtrain checkpoint or run directory)")


def _load_json_file(f: Path) -> BaseTokenizer:
    try:
        text = f.read_text(encoding="utf-8")
        obj = json.loads(text)
    except (OSError, ValueError) as e:
        raise BigtrainError(f"{f}: not valid JSON ({type(e).__name__})") from None
    if isinstance(obj, dict) and "model" in obj:
        from bigtrain.tokenizer.hf import HFTokenizer

        return HFTokenizer(f, text, obj)
    if isinstance(obj, dict) and obj.get("type") == "sentencepiece":
        if not (f.parent / MODEL_FILE).is_file():
            raise BigtrainError(f"{f.parent}: no {MODEL_FILE} next to bigtrain's sentencepiece metadata {f.name}")
        return _load_sentencepiece(f.parent / MODEL_FILE, f.parent, obj, path=f.parent)
    raise BigtrainError(f"{f}: neither a Hugging Face tokenizer (a JSON object with a \"model\") nor bigtrain's "
                        "sentencepiece metadata (\"type\": \"sentencepiece\")")


def _sp_meta(f: Path) -> dict | None:
    """bigtrain's metadata next to a sentencepiece model, if that is what ``f`` is."""
    try:
        obj = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("type") == "sentencepiece" else None


def _load_sentencepiece(model: Path, directory: Path, meta: dict | None = None, *,
                        path: Path) -> SentencePieceTokenizer:
    files = [model]
    if meta is not None:
        files.append(directory / META_FILE)
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        files.append(directory / CHAT_TEMPLATE_FILE)
    tok = SentencePieceTokenizer(model.read_bytes(), meta, path, files, chat_template_of(directory))
    if meta and meta.get("sha256") and meta["sha256"] != tok.sha256:
        raise BigtrainError(f"{model}: sha256 {tok.sha256[:12]}… does not match {directory / META_FILE} "
                            f"({meta['sha256'][:12]}…); the directory was modified")
    return tok


def _load_from_checkpoint(p: Path) -> BaseTokenizer:
    from bigtrain.checkpoint.manager import read_meta, resolve_checkpoint

    ckpt = resolve_checkpoint(p)
    meta = read_meta(ckpt)
    sub = meta.get("tokenizer")
    if not sub:
        raise BigtrainError(f"{p}: the checkpoint {ckpt.name} carries no tokenizer (no \"tokenizer\" in bigtrain.json)")
    tok = _load(ckpt / sub, follow_checkpoint=False)
    eos = meta.get("tokenizer_eos")  # training's EOS, when --eos-token named one the files do not
    return tok.with_eos(eos) if eos and tok.token_to_id(eos) != tok.eos_id else tok
