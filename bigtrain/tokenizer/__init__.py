"""Tokenizers: one interface, two backends (sentencepiece, Hugging Face ``tokenizers``).

Public API::

    from bigtrain.tokenizer import load_tokenizer, train_tokenizer
    tok = load_tokenizer(path)   # bigtrain tokenizer dir, .model file, HF model/tokenizer dir, checkpoint or run dir
    tok.encode(text, bos=, eos=), tok.encode_batch(texts, bos=, eos=), tok.decode(ids), tok.id_to_piece(i)
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id (-1 when absent), tok.sha256, tok.path,
    tok.kind ("sentencepiece" | "hf"), tok.chat_template, tok.apply_chat_template(messages, add_generation_prompt=)
    tok.info() (what manifests and checkpoints record), tok.token_bytes() (for bits-per-byte), tok.files()

Exporting to a Hugging Face directory with ids checked against transformers: :mod:`bigtrain.tokenizer.hf_export`.
"""

from bigtrain.tokenizer.base import BaseTokenizer, TokenBytes
from bigtrain.tokenizer.hf import HFTokenizer
from bigtrain.tokenizer.model import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceTokenizer, Tokenizer,
                                      load_tokenizer)

__all__ = ["BaseTokenizer", "HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "TokenBytes", "load_tokenizer",
           "train_tokenizer", "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID"]


def train_tokenizer(*args, **kwargs):
    from bigtrain.tokenizer.train import train_tokenizer as _train

    return _train(*args, **kwargs)
