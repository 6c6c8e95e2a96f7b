"""Bits-per-byte: the byte count of tokens is exact, and the metric equals a hand calculation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigtrain.eval.heldout import ByteCounter, evaluate_windows
from bigtrain.tokenizer import load_tokenizer
from bigtrain.tokenizer.hf_export import generated_texts
from tests.hf_tokenizers import corpus_docs, make_byte_level_bpe, make_metaspace_bpe

TEXTS = ["Hello world", "  def foo(x):\n    return x ** 2\n", "ünïcödé 你好 🎉 12345", "a  b\tc\n\nd  ", " x", "é"]


@pytest.fixture(scope="module")
def tok(corpus_tokenizer):
    return corpus_tokenizer


def test_token_bytes_sum_to_the_text_bytes(tok):
    counter = ByteCounter(tok)
    for text in TEXTS:
        ids = tok.encode(text)
        assert counter.document_bytes(ids + [tok.eos_id]) == len(text.encode("utf-8")), text
    # a stream of documents (each ending in EOS), cut into windows: the targets' bytes add up
    stream = [i for t in TEXTS for i in tok.encode(t, eos=True)]
    L = 7
    windows = [np.array(stream[k * L:k * L + L + 1]) for k in range((len(stream) - 1) // L)]
    covered = len(windows) * L + 1
    want = sum(counter.target_bytes(np.array(stream[j - 1:j + 1])) for j in range(1, covered))
    assert sum(counter.target_bytes(w) for w in windows) == want


@pytest.fixture(scope="module")
def tokenizers_of_each_kind(corpus_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("bpb-tok")
    docs = corpus_docs(300)
    return {"sentencepiece": corpus_tokenizer,
            "hf_byte_level": load_tokenizer(make_byte_level_bpe(root / "bl", docs)),
            "hf_metaspace_byte_fallback": load_tokenizer(make_metaspace_bpe(root / "ms", docs))}


@pytest.mark.parametrize("kind", ["sentencepiece", "hf_byte_level", "hf_metaspace_byte_fallback"])
def test_token_bytes_of_each_tokenizer_kind(tokenizers_of_each_kind, kind):
    """On real documents and generated code / whitespace runs / unicode, the bytes of a document's tokens are the
    UTF-8 bytes of its text (for every document the tokenizer decodes back to itself)."""
    tok = tokenizers_of_each_kind[kind]
    counter = ByteCounter(tok)
    texts = corpus_docs(300) + generated_texts(300) + TEXTS
    checked = 0
    for text, ids in zip(texts, tok.encode_batch(texts, eos=True)):
        if tok.decode(ids) != text:
            continue  # strings that look like special tokens, a literal ▁: the text is not what the tokens spell
        assert counter.document_bytes(ids) == len(text.encode("utf-8")), text[:80]
        checked += 1
    assert checked >= 450, checked


def test_bpb_equals_hand_calculation(tok):
    from bigtrain.generate.inference import build_model
    from bigtrain.model.config import ModelConfig

    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, vocab_size=512, seq_len=8), seed=7)
    docs = ["ab", "é!"]
    stream = [i for t in docs for i in tok.encode(t, eos=True)]
    windows = [np.array(stream[:len(stream)])]  # one window: every token after the first is a target
    res = evaluate_windows(model, windows, ByteCounter(tok), batch_size=1)
    # by hand: nats of each target from a softmax of the model's logits, bytes of the text they encode
    x = torch.tensor(stream)
    with torch.no_grad():
        logits = model(x[None, :-1])[0].double()
    nats = sum(-(logits[t] - torch.logsumexp(logits[t], 0))[x[t + 1]].item() for t in range(len(stream) - 1))
    # targets: the rest of "ab" (the first token of the stream is not predicted), EOS, all of "é!", EOS
    first_piece = tok.id_to_piece(stream[0]).replace("\u2581", " ")
    nbytes = len("ab") - len(first_piece.lstrip(" ").encode()) + len("é!".encode())
    assert res["tokens"] == len(stream) - 1 and res["bytes"] == nbytes
    assert math.isclose(res["loss"], nats / (len(stream) - 1), rel_tol=1e-6)
    assert math.isclose(res["bpb"], nats / (math.log(2) * nbytes), rel_tol=1e-6)
    assert math.isclose(res["ppl"], math.exp(res["loss"]), rel_tol=1e-9)
