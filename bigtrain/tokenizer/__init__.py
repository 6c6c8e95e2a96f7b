"""Tokenizer: train a sentencepiece model (``bigtrain tokenizer train``) and load it anywhere.

Public API::

    from bigtrain.tokenizer import load_tokenizer, train_tokenizer, Tokenizer
    tok = load_tokenizer("runs/tok")        # .encode(text, bos=, eos=), .decode(ids), .vocab_size,
                                            # .bos_id, .eos_id, .pad_id, .unk_id, .sha256, .info()
"""

from bigtrain.tokenizer.model import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer", "train_tokenizer", "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID"]


def train_tokenizer(*args, **kwargs):
    from bigtrain.tokenizer.train import train_tokenizer as _train

    return _train(*args, **kwargs)
