"""`bigtrain preprocess` end to end on the bundled real-text corpus, with Ray tasks.

One local Ray (2 CPUs) serves the module; `workers` then caps the tokenize tasks in flight. The CLI starting
its own Ray is run in tests/e2e/test_preprocess_scale.py.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bigtrain.data import readers
from bigtrain.data.preprocess import doc_key, preprocess
from bigtrain.data.shards import read_shard
from bigtrain.tokenizer import load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data" / "python-docs.jsonl.gz"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """900 real documents spread over every input format, with one document duplicated across files."""
    root = tmp_path_factory.mktemp("inputs")
    docs = [json.loads(line)["text"] for line in gzip.open(CORPUS, "rt")][:900]
    (root / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"content": d}) + "\n" for d in docs[:300]).encode()))
    (root / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"content": d}) + "\n" for d in docs[300:600] + [docs[0]]).encode()))
    pq.write_table(pa.table({"content": docs[600:880]}), root / "c.parquet", row_group_size=64)
    (root / "d").mkdir()
    for i, d in enumerate(docs[880:]):
        (root / "d" / f"{i:02d}.txt").write_text(d)
    (root / "e.jsonl").write_bytes(b'{"content": "caf\xe9 latin-1"}\n' + json.dumps({"content": docs[1]}).encode() + b"\n")
    tok = train_tokenizer([CORPUS], 2000, root / "tok")
    inputs = [str(root / "a.jsonl.gz"), str(root / "b.jsonl.zst"), str(root / "c.parquet"), str(root / "d"),
              str(root / "e.jsonl")]
    return {"root": root, "inputs": inputs, "tok": root / "tok", "tokenizer": tok}


def _run(corpus, out, inputs=None, workers=1, **kw):
    return preprocess(inputs or corpus["inputs"], str(corpus["tok"]), str(out), num_shards=3,
                      heldout_fraction=0.05, text_field="content", workers=workers, quiet=True, **kw)


def _files(out: Path) -> dict[str, bytes]:
    """The output (manifest and shards); ``.state`` holds bookkeeping such as which worker ran each chunk."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".state" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def ds(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "ds"
    manifest = _run(corpus, out, workers=1)
    return out, manifest


@pytest.mark.parametrize("workers,chunk_size,order_seed", [(2, "100k", None), (4, "37k", 3)])
def test_same_output_for_any_workers_and_input_order(ds, corpus, tmp_path, workers, chunk_size, order_seed):
    out1, m1 = ds
    out2 = tmp_path / "ds2"
    inputs = list(reversed(corpus["inputs"]))
    if order_seed is not None:  # a shuffled order, reproducible from the printed seed
        random.Random(order_seed).shuffle(inputs)
        print(f"input order (seed {order_seed}): {[Path(p).name for p in inputs]}")
    # small chunks: the parquet file is read as several runs of row groups, the small txt files are grouped;
    # 4 workers on Ray's 2 CPUs: more tasks in flight than run at once
    m2 = _run(corpus, out2, inputs=inputs, workers=workers, chunk_size=chunk_size)
    assert m1 == m2
    assert _files(out1) == _files(out2)  # manifest.json and every shard, byte for byte
    pieces = [p for f in sorted((out2 / ".state" / "chunks").glob("*.json")) for p in json.loads(f.read_text())["pieces"]]
    assert sum(1 for p in pieces if p[0].endswith("c.parquet") and p[1] == "rows") >= 3
    assert max(len([p for p in json.loads(f.read_text())["pieces"] if p[0].endswith(".txt")])
               for f in (out2 / ".state" / "chunks").glob("*.json")) >= 10
    assert len(m1["shards"]) == 4 and {s["split"] for s in m1["shards"]} == {"train", "heldout"}


def test_manifest_counts(ds):
    _, m = ds
    rows = {Path(r["path"]).name: r for r in m["inputs"]}
    assert len(rows) == 24  # 4 files + 20 txt files in d/ (expanded, sorted)
    for r in rows.values():
        assert r["documents_read"] == r["documents_written"] + sum(r["documents_skipped"].values())
    # docs[0] again in b, docs[1] again in e: the copy in the later (path, line) is dropped
    assert rows["b.jsonl.zst"]["documents_skipped"] == {"duplicate": 1}
    assert rows["e.jsonl"]["documents_skipped"] == {"duplicate": 1, "invalid_utf8": 1}
    assert m["totals"]["documents_written"] == 900
    assert m["tokenizer"]["vocab_size"] == 2000 and len(m["tokenizer"]["sha256"]) == 64
    assert m["bigtrain_version"]
    assert sum(s["samples"] for s in m["shards"]) == 900


def test_tokens_equal_sentencepiece(ds, corpus):
    out, m = ds
    tok = load_tokenizer(corpus["tok"])
    want = {}
    for f in readers.expand_inputs(corpus["inputs"]):
        for text, _ in readers.iter_documents(f, "content"):
            if text is not None:
                want[doc_key(text)] = tok.encode(text, eos=True)
    got = {}
    n_tokens = 0
    for shard in m["shards"]:
        keys, lengths, tokens = read_shard(out / shard["path"])
        assert len(keys) == shard["samples"] and len(tokens) == shard["tokens"] == lengths.sum()
        assert keys == sorted(keys)
        start = 0
        for k, n in zip(keys, lengths):
            got[k] = tokens[start:start + n].tolist()
            start += n
        n_tokens += len(tokens)
    assert got == want
    assert n_tokens == sum(len(v) for v in want.values())


def test_rerun_keeps_verified_shards(ds, corpus, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(ds[0], out)
    before = _files(out)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in before}
    # complete output: nothing is redone
    _run(corpus, out)
    assert {p: (out / p).stat().st_mtime_ns for p in before} == mtimes
    # a crash mid-run: manifest gone, one shard missing, one corrupt -> those two are redone, the rest kept
    (out / "manifest.json").unlink()
    (out / "train/shard-00000.tar").unlink()
    (out / "train/shard-00001.tar").write_bytes(b"garbage")
    shards = [p for p in before if p.endswith(".tar")]
    inodes = {p: (out / p).stat().st_ino for p in shards if p != "train/shard-00000.tar"}
    _run(corpus, out)
    assert _files(out) == before
    # a shard is written under a temporary name and renamed: a rewritten shard is a new inode, a kept one is not
    assert (out / "train/shard-00001.tar").stat().st_ino != inodes["train/shard-00001.tar"]
    kept = {p: (out / p).stat().st_ino for p in inodes if p != "train/shard-00001.tar"}
    assert kept and kept == {p: inodes[p] for p in kept}
    assert all((out / p).stat().st_mtime_ns == mtimes[p] for p in kept)


# ---------------------------------------------------------------- bad inputs: one line each
def _cli_error(args, capsys) -> str:
    from bigtrain.cli import main

    with pytest.raises(SystemExit) as e:
        main(["preprocess", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bigtrain: error: ") and err.count("\n") == 1, err
    return err


def _args(corpus, inputs, out):
    return ["--input", *map(str, inputs), "--tokenizer", str(corpus["tok"]), "--output", str(out), "--quiet"]


def test_empty_file(ray_local, corpus, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    err = _cli_error(_args(corpus, [tmp_path / "empty.jsonl"], tmp_path / "o"), capsys)
    assert "empty.jsonl: empty file" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_invalid_utf8_is_a_counted_skip(ray_local, corpus, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "good one"}\n{"text": "bad \xff"}\n\xfe\xfe\n{"text": "good two"}\n')
    m = preprocess([str(p)], str(corpus["tok"]), str(tmp_path / "o"), num_shards=1, heldout_fraction=0,
                   quiet=True)
    assert m["inputs"][0]["documents_read"] == 4
    assert m["inputs"][0]["documents_written"] == 2
    assert m["inputs"][0]["documents_skipped"] == {"invalid_utf8": 2}


def test_truncated_gzip(ray_local, corpus, tmp_path, capsys):
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(CORPUS.read_bytes()[:200_000])
    err = _cli_error(_args(corpus, [p], tmp_path / "o"), capsys)
    assert "cut.jsonl.gz: truncated or corrupt gzip data" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_parquet_without_text_column(ray_local, corpus, tmp_path, capsys):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), p)
    err = _cli_error(_args(corpus, [p], tmp_path / "o"), capsys)
    assert "t.parquet: parquet file has no column 'text' (columns: body)" in err


def test_missing_path(ray_local, corpus, tmp_path, capsys):
    err = _cli_error(_args(corpus, [tmp_path / "nope.jsonl"], tmp_path / "o"), capsys)
    assert "nope.jsonl: input path does not exist" in err
