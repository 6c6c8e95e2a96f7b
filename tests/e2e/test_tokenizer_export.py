"""Exporting a tokenizer to Hugging Face format gives transformers the ids bigtrain trained with, on code.

A sentencepiece tokenizer trained on code has whitespace pieces (``▁▁▁▁``). Sentencepiece keeps a run of spaces
with the word after it (``▁▁▁▁return``) before merging; a Metaspace pre-tokenizer (what the first export used)
cuts before every ``▁`` and so never forms those pieces: most code documents came out with other ids.
"""

from __future__ import annotations

import json

import pytest

from bigtrain.errors import BigtrainError
from bigtrain.tokenizer import load_tokenizer
from bigtrain.tokenizer.hf_export import (generated_texts, sample_texts, save_hf_tokenizer, training_texts,
                                          verify_hf_tokenizer)
from tests.helpers import bigtrain
from tests.hf_tokenizers import corpus_docs, make_byte_level_bpe


@pytest.fixture(scope="module")
def code_tokenizer(tmp_path_factory):
    """`bigtrain tokenizer train` on generated code (another seed than the documents it is checked on)."""
    root = tmp_path_factory.mktemp("code-tok")
    with open(root / "code.jsonl", "w") as f:
        for text in generated_texts(3000, seed=1):
            f.write(json.dumps({"text": text}) + "\n")
    bigtrain("tokenizer", "train", "--input", str(root / "code.jsonl"), "--vocab-size", "1000",
             "--output", str(root / "tok"))
    return load_tokenizer(root / "tok")


@pytest.fixture(scope="module")
def code_docs():
    return generated_texts(600, seed=0)


def test_sentencepiece_export_has_equal_ids_on_code(code_tokenizer, code_docs, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = code_tokenizer
    assert "▁▁▁▁" in tok.pieces()  # trained on code: indentation pieces exist, the case the first export got wrong
    out = tmp_path / "hf"
    save_hf_tokenizer(tok, out, model_max_length=256)
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}
    hf = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(hf, PreTrainedTokenizerFast) and hf.model_max_length == 256
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == \
        (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id)
    assert hf("def f():")["input_ids"] == [tok.bos_id, *tok.encode("def f():")]  # BOS added as Llama does
    hf.model_max_length = 1 << 60
    ours, theirs = tok.encode_batch(code_docs), hf(code_docs, add_special_tokens=False)["input_ids"]
    assert sum(a != b for a, b in zip(ours, theirs)) == 0
    verify_hf_tokenizer(out, tok, sample_texts(tok) + code_docs)  # also the training documents, and decoding


def test_verify_names_the_first_document_that_differs(code_tokenizer, code_docs, tmp_path):
    """The first export's pre-tokenizer (Metaspace, cutting before every ▁) fails the check in one line."""
    out = tmp_path / "hf"
    save_hf_tokenizer(code_tokenizer, out, model_max_length=256)
    j = json.loads((out / "tokenizer.json").read_text())
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True},
        {"type": "Digits", "individual_digits": True}]}
    (out / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False))
    with pytest.raises(BigtrainError) as e:
        verify_hf_tokenizer(out, code_tokenizer, code_docs)
    msg = str(e.value)
    assert "\n" not in msg and "differ from bigtrain's (sentencepiece) on document 0 of 600 at token" in msg, msg


def test_sample_texts_reads_the_training_data(code_tokenizer):
    trained = training_texts(code_tokenizer, 50)
    assert trained == generated_texts(50, seed=1)  # the first documents of what it was trained on
    sample = sample_texts(code_tokenizer, 50)
    assert len(sample) == 100 and sample[50:] == generated_texts(50)
    assert any("\t" in t for t in sample) and any("    " in t for t in sample) and any("\n\n" in t for t in sample)


def test_hugging_face_tokenizer_is_copied_unchanged(tmp_path):
    src = make_byte_level_bpe(tmp_path / "src", corpus_docs(200))
    tok = load_tokenizer(src)
    out = tmp_path / "out"
    save_hf_tokenizer(tok, out, model_max_length=64)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in tok.files()}
    verify_hf_tokenizer(out, tok, corpus_docs(300) + sample_texts(tok))
