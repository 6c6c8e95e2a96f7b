"""`bigtrain preprocess` with Hugging Face tokenizers: the tokenizer's ids, byte-identical output for any worker
count, 4-byte tokens for vocabularies above 65,536 read back by the loader, and one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bigtrain.data.preprocess import doc_key, preprocess
from bigtrain.data.shard_source import ShardWindowSource
from bigtrain.data.shards import read_shard
from bigtrain.tokenizer import load_tokenizer
from bigtrain.tokenizer.hf_export import generated_texts
from tests.helpers import REPO, TINY, bigtrain
from tests.hf_tokenizers import corpus_docs, make_big_word_level, make_byte_level_bpe, make_metaspace_bpe

CORPUS = str(REPO / "data" / "python-docs.jsonl.gz")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-pre")
    docs = corpus_docs(400) + generated_texts(200)
    (root / "in.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode()))
    train = corpus_docs(300)
    return {"root": root, "input": str(root / "in.jsonl.gz"), "docs": docs,
            "byte_level": make_byte_level_bpe(root / "byte_level", train),
            "metaspace": make_metaspace_bpe(root / "metaspace", train),
            "big": make_big_word_level(root / "big", docs)}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _docs_by_key(docs):
    return {doc_key(d): d for d in docs}


@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
def test_same_output_for_one_and_two_workers(ray_local, setup, kind, tmp_path):
    tok = load_tokenizer(setup[kind])
    runs = [preprocess([setup["input"]], str(setup[kind]), str(tmp_path / f"w{w}"), num_shards=3,
                       heldout_fraction=0.05, workers=w, quiet=True) for w in (1, 2)]
    assert runs[0] == runs[1] and _files(tmp_path / "w1") == _files(tmp_path / "w2")
    m = runs[0]
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["sha256"] == tok.sha256
    assert m["tokenizer"]["eos_id"] == tok.eos_id >= 0 and m["token_dtype"] == "uint16"
    by_key = _docs_by_key(setup["docs"])
    for shard in m["shards"]:
        keys, lengths, tokens = read_shard(tmp_path / "w1" / shard["path"])
        want = tok.encode_batch([by_key[k] for k in keys], eos=True)
        assert lengths.tolist() == [len(w) for w in want]
        assert tokens.tolist() == [i for w in want for i in w]


def test_big_vocabulary_needs_eos_token_then_stores_uint32(ray_local, setup, tmp_path):
    """A tokenizer without EOS is refused in one line (CLI); with --eos-token naming one, ids above 65,535 go to
    uint32 shards that the loader reads back unchanged."""
    out = tmp_path / "ds"
    proc = bigtrain("preprocess", "--input", setup["input"], "--tokenizer", str(setup["big"]), "--output", str(out),
                    check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith("bigtrain: error: ") and "no EOS token" in proc.stderr
    assert "--eos-token" in proc.stderr
    assert not out.exists()
    m = preprocess([setup["input"]], str(setup["big"]), str(out), num_shards=2, heldout_fraction=0, workers=2,
                   quiet=True, eos_token="<eos>")
    tok = load_tokenizer(setup["big"]).with_eos("<eos>")
    assert m["token_dtype"] == "uint32" and m["tokenizer"]["vocab_size"] == tok.vocab_size > 65536
    assert m["tokenizer"]["eos_id"] == tok.eos_id == 1
    by_key = _docs_by_key(setup["docs"])
    stream = []
    for shard in m["shards"]:
        keys, _lengths, tokens = read_shard(out / shard["path"])
        assert tokens.dtype == np.dtype("<u4") and int(tokens.max()) > 65535
        stream += [i for ids in tok.encode_batch([by_key[k] for k in keys], eos=True) for i in ids]
    L = 64
    src = ShardWindowSource(out, L, seed=0, split="train", shuffle_buffer=0, vocab_size=tok.vocab_size)
    # training on it: the run's tokenizer takes the dataset's EOS; a model vocabulary below the tokenizer's fails
    from bigtrain.config.job import load_job_config
    from bigtrain.errors import BigtrainError
    from bigtrain.train.trainer import resolve_tokenizer

    job = load_job_config(TINY, [f"data.path={out}", f"model.vocab_size={tok.vocab_size}"])
    assert resolve_tokenizer(job).eos_id == 1
    with pytest.raises(BigtrainError, match=f"has {tok.vocab_size} tokens but model.vocab_size=65536"):
        resolve_tokenizer(load_job_config(TINY, [f"data.path={out}", "model.vocab_size=65536"]))
    assert src.n_windows == (len(stream) - 1) // L
    for i in range(src.n_windows):
        assert src.window(i).tolist() == stream[i * L:i * L + L + 1]


@pytest.mark.parametrize("case", ["not_a_tokenizer", "eos_token_not_in_vocab", "hf_without_eos"])
def test_bad_tokenizer_is_one_line(setup, tmp_path, case):
    tok_arg, extra, fragment = {
        "not_a_tokenizer": (str(setup["root"]), [], "not a tokenizer"),
        "eos_token_not_in_vocab": (str(setup["metaspace"]), ["--eos-token", "<nope>"],
                                   "--eos-token: EOS token '<nope>' is not in the vocabulary"),
        "hf_without_eos": (str(setup["big"] / "tokenizer.json"), [], "has no EOS token"),
    }[case]
    proc = bigtrain("preprocess", "--input", CORPUS, "--tokenizer", tok_arg, "--output", str(tmp_path / "o"),
                    *extra, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("bigtrain: error: ") and fragment in lines[0], lines[0]
    assert not (tmp_path / "o").exists()
