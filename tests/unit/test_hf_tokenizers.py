"""The Hugging Face `tokenizers` backend against transformers' AutoTokenizer, and load_tokenizer's inputs."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from bigtrain.errors import BigtrainError
from bigtrain.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from bigtrain.tokenizer.hf_export import generated_texts
from tests.hf_tokenizers import (BOS, EOS, corpus_docs, make_big_word_level, make_byte_level_bpe,
                                 make_metaspace_bpe)


@pytest.fixture(scope="module")
def texts():
    """Real documents of the bundled corpus and generated ones (code, whitespace runs, unicode, special-looking
    strings)."""
    return corpus_docs(300) + generated_texts(300)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-tok")
    docs = corpus_docs(300)
    return {"byte_level": make_byte_level_bpe(root / "byte_level", docs),
            "metaspace": make_metaspace_bpe(root / "metaspace", docs)}


@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
def test_ids_and_specials_equal_autotokenizer(hf_dirs, texts, kind):
    from transformers import AutoTokenizer

    tok = load_tokenizer(hf_dirs[kind])
    hf = AutoTokenizer.from_pretrained(str(hf_dirs[kind]))
    hf.model_max_length = 1 << 60
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf"
    ours = tok.encode_batch(texts)
    assert ours == hf(texts, add_special_tokens=False)["input_ids"]
    assert all(tok.decode(a) == hf.decode(a, skip_special_tokens=True) for a in ours)
    assert all(tok.decode(a) == t for a, t in zip(ours[:300], texts[:300]))  # real documents round-trip
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id)
    assert tok.unk_id == (-1 if hf.unk_token_id is None else hf.unk_token_id) and tok.pad_id == -1
    assert tok.vocab_size == len(hf)
    assert tok.encode(texts[0]) == ours[0]
    # bigtrain adds BOS/EOS only when asked, whatever the tokenizer's post-processor does
    assert tok.encode(texts[0], bos=True, eos=True) == [tok.bos_id, *ours[0], tok.eos_id]
    assert tok.info()["kind"] == "hf" and len(tok.info()["sha256"]) == 64


def test_byte_level_post_processor_is_not_applied(hf_dirs):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(hf_dirs["byte_level"]))
    tok = load_tokenizer(hf_dirs["byte_level"])
    assert hf("hi there")["input_ids"][0] == tok.bos_id  # transformers' default adds BOS …
    assert tok.encode("hi there") == hf("hi there", add_special_tokens=False)["input_ids"]  # … bigtrain does not
    assert tok.id_to_piece(tok.bos_id) == BOS and tok.id_to_piece(tok.eos_id) == EOS


def test_pickles_for_ray_workers(hf_dirs, corpus_tokenizer, texts):
    for tok in (load_tokenizer(hf_dirs["byte_level"]), load_tokenizer(hf_dirs["metaspace"]), corpus_tokenizer):
        again = pickle.loads(pickle.dumps(tok))
        assert again.encode_batch(texts[:50], eos=True) == tok.encode_batch(texts[:50], eos=True)
        assert (again.sha256, again.vocab_size, again.eos_id) == (tok.sha256, tok.vocab_size, tok.eos_id)


def test_chat_template_renders_like_transformers(hf_dirs, corpus_tokenizer):
    from transformers import AutoTokenizer

    tok = load_tokenizer(hf_dirs["byte_level"])
    hf = AutoTokenizer.from_pretrained(str(hf_dirs["byte_level"]))
    msgs = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi\nthere", "name": None},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "ünïcödé 你好"}]
    for gen in (False, True):
        assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == \
            hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    with pytest.raises(BigtrainError, match="chat template: unknown role tool"):  # the template's raise_exception
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(BigtrainError, match="has no chat template"):
        corpus_tokenizer.apply_chat_template(msgs)


def test_load_every_kind_of_path(hf_dirs, corpus_tokenizer_dir, tmp_path):
    sp = load_tokenizer(corpus_tokenizer_dir)
    assert isinstance(sp, SentencePieceTokenizer) and sp.kind == "sentencepiece"
    assert {f.name for f in sp.files()} == {"tokenizer.model", "tokenizer.json"}
    bare = load_tokenizer(corpus_tokenizer_dir / "tokenizer.model")
    assert bare.sha256 == sp.sha256 and bare.encode("x = 1") == sp.encode("x = 1")
    # A Hugging Face directory with both files is read through tokenizer.json, as AutoTokenizer does.
    both = shutil.copytree(hf_dirs["metaspace"], tmp_path / "both")
    shutil.copy(corpus_tokenizer_dir / "tokenizer.model", both / "tokenizer.model")
    tok = load_tokenizer(both)
    assert tok.kind == "hf" and tok.vocab_size == load_tokenizer(hf_dirs["metaspace"]).vocab_size
    assert load_tokenizer(both / "tokenizer.json").sha256 == tok.sha256
    assert {f.name for f in tok.files()} == {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}
    # A checkpoint carries its tokenizer; a run directory resolves to its newest checkpoint.
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    shutil.copytree(hf_dirs["byte_level"], ckpt / "tokenizer")
    (ckpt / "bigtrain.json").write_text(json.dumps({"step": 4, "config": {}, "tokenizer": "tokenizer"}))
    for p in (ckpt, tmp_path / "run"):
        assert load_tokenizer(p).sha256 == load_tokenizer(hf_dirs["byte_level"]).sha256
    (ckpt / "bigtrain.json").write_text(json.dumps({"step": 4, "config": {}, "tokenizer": None}))
    with pytest.raises(BigtrainError, match="carries no tokenizer"):
        load_tokenizer(tmp_path / "run")


def test_bad_tokenizer_inputs_are_one_line_errors(hf_dirs, tmp_path):
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "config.json").write_text("{}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenizer.json").write_text(json.dumps({"vocab": {}}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
    bad_special = shutil.copytree(hf_dirs["metaspace"], tmp_path / "bad_special")
    cfg = json.loads((bad_special / "tokenizer_config.json").read_text())
    (bad_special / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": "<nope>"}))
    cases = {"neither": "not a tokenizer", "other": "neither a Hugging Face tokenizer",
             "broken": "not a usable Hugging Face tokenizer", "bad_special": "eos_token '<nope>' is not in the vocabulary",
             "missing": "not found"}
    for name, fragment in cases.items():
        with pytest.raises(BigtrainError) as e:
            load_tokenizer(tmp_path / name)
        assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    tok = load_tokenizer(hf_dirs["metaspace"])
    with pytest.raises(BigtrainError, match="not in the vocabulary"):
        tok.with_eos("<nope>")
    assert tok.with_eos("<unk>").eos_id == tok.unk_id and tok.eos_id != tok.unk_id


def test_big_vocabulary_ids(tmp_path):
    tok = load_tokenizer(make_big_word_level(tmp_path / "big", corpus_docs(50)))
    assert tok.vocab_size > 65536 and tok.eos_id == -1
    ids = tok.encode(corpus_docs(1)[0])
    assert min(ids) > 65535
    with pytest.raises(BigtrainError, match="no EOS token"):
        tok.encode("x", eos=True)
