"""Tokenizer training and loading (sentencepiece with byte fallback, fixed special ids)."""

from __future__ import annotations

import json
import random

import pytest

from bigtrain.errors import BigtrainError
from bigtrain.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_tokenizer, train_tokenizer

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly pack boxes of liquor "
         "and jugs near an old river under bright morning light").split()


def make_corpus(path, n=400, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")
    return path


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_and_load(tmp_path, model_type):
    corpus = make_corpus(tmp_path / "c.jsonl")
    tok = train_tokenizer([corpus], 340, tmp_path / "tok", model_type=model_type)
    again = load_tokenizer(tmp_path / "tok")
    assert again.sha256 == tok.sha256 and again.vocab_size == 340
    assert (again.unk_id, again.bos_id, again.eos_id, again.pad_id) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID)
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["model_type"] == model_type and meta["sha256"] == tok.sha256
    text = "The lazy fox jumps. Ünïcödé → 漢字 😀"  # unseen characters go through byte fallback
    ids = again.encode(text, bos=True, eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and UNK_ID not in ids
    assert again.decode(ids) == text


def test_cli_train(tmp_path, capsys):
    from bigtrain.cli import main

    corpus = make_corpus(tmp_path / "c.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "350", "--output", str(tmp_path / "t")])
    assert e.value.code == 0
    assert load_tokenizer(tmp_path / "t").vocab_size == 350
    assert "tokenizer: wrote" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    from bigtrain.cli import main

    for argv in (["--input", str(tmp_path / "missing.jsonl"), "--vocab-size", "400"],
                 ["--input", str(make_corpus(tmp_path / "c.jsonl", n=3)), "--vocab-size", "100000"],
                 ["--input", str(tmp_path / "c.jsonl"), "--vocab-size", "10"]):
        with pytest.raises(SystemExit) as e:
            main(["tokenizer", "train", *argv, "--output", str(tmp_path / "t")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("bigtrain: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "t").exists()


def test_load_errors(tmp_path):
    with pytest.raises(BigtrainError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BigtrainError, match="no tokenizer.model"):
        load_tokenizer(tmp_path / "empty")


def test_sentencepiece_common_interface(corpus_tokenizer_dir, tmp_path):
    import pickle
    import shutil

    d = shutil.copytree(corpus_tokenizer_dir, tmp_path / "tok")
    tok = load_tokenizer(d)
    assert tok.kind == "sentencepiece" and tok.chat_template is None
    assert tok.info()["kind"] == "sentencepiece" and tok.info()["model_type"] == "bpe"
    assert pickle.loads(pickle.dumps(tok)).encode("def f(x):\n    return x") == tok.encode("def f(x):\n    return x")
    assert tok.token_to_id("<pad>") == PAD_ID and tok.token_to_id("no such piece") is None
    # a chat template stored with the tokenizer is rendered with its special tokens, and is one of its files
    (d / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
                                           "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = load_tokenizer(d)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True) == \
        "<s>[user] hi</s>[assistant] "
    assert {f.name for f in tok.files()} == {"tokenizer.model", "tokenizer.json", "chat_template.jinja"}
    with pytest.raises(BigtrainError, match="EOS token 'nope' is not in the vocabulary"):
        tok.with_eos("nope")
