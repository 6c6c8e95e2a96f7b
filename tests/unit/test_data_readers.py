"""Document readers: every format, per-document skips, and one-line errors for broken files."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bigtrain.data import readers
from bigtrain.errors import BigtrainError

DOCS = ["First document.\nWith two lines.", "Second ü 漢字", "Third"]


def _jsonl(docs):
    return "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet", "a.txt"])
def test_formats(tmp_path, name):
    p = tmp_path / name
    if name == "a.jsonl":
        p.write_bytes(_jsonl(DOCS))
    elif name.endswith(".gz"):
        p.write_bytes(gzip.compress(_jsonl(DOCS)))
    elif name.endswith(".zst"):
        p.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(DOCS)))
    elif name.endswith(".parquet"):
        pq.write_table(pa.table({"body": DOCS}), p, row_group_size=2)
    else:
        p.write_text("\n\n".join(DOCS))
    field = "body" if name.endswith(".parquet") else "text"
    got = [t for t, _ in readers.iter_documents(p, field)]
    assert got == (["\n\n".join(DOCS)] if name.endswith(".txt") else DOCS)


def test_document_skips_are_counted(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(_jsonl(["ok"]) + b'{"text": "bad \xff\xfe"}\n' + b"not json\n" + b'{"other": 1}\n'
                  + b'{"text": 5}\n' + b'{"text": "   "}\n' + b"\n")
    assert [r for _, r in readers.iter_documents(p)] == [
        None, readers.INVALID_UTF8, readers.INVALID_JSON, readers.MISSING_FIELD, readers.NOT_TEXT,
        readers.EMPTY_TEXT]


def test_truncated_streams_are_errors(tmp_path):
    data = _jsonl(DOCS * 200)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(data)[:-30])
    with pytest.raises(BigtrainError, match="truncated or corrupt gzip") as e:
        list(readers.iter_documents(gz))
    assert "\n" not in str(e.value)
    zs = tmp_path / "a.jsonl.zst"
    zs.write_bytes(zstandard.ZstdCompressor().compress(data)[:-30])
    with pytest.raises(BigtrainError, match="zstd"):
        list(readers.iter_documents(zs))


def test_large_txt_is_cut_at_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_TXT_DOC_BYTES", 100)
    p = tmp_path / "big.txt"
    paras = [f"paragraph {i} " + "x" * 60 for i in range(10)]
    p.write_text("\n\n".join(paras) + "\n")
    docs = [t for t, _ in readers.iter_documents(p)]
    assert len(docs) > 1 and "".join(docs) == p.read_text()


def test_expand_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.jsonl").write_bytes(_jsonl(DOCS))
    (tmp_path / "d" / "a.txt").write_text("x")
    (tmp_path / "d" / "skip.md").write_text("x")
    got = readers.expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "a.txt")])
    assert [p.name for p in got] == ["a.txt", "b.jsonl"]
    with pytest.raises(BigtrainError, match="unknown input format"):
        readers.expand_inputs([str(tmp_path / "d" / "skip.md")])


def test_default_chunk_size_is_a_256th_of_the_input_within_4_and_256_mib(tmp_path):
    from bigtrain.data.chunks import auto_chunk_bytes, plan_chunks

    mib = 1 << 20
    assert auto_chunk_bytes(100 * mib) == 4 * mib  # small corpora: the floor
    assert auto_chunk_bytes(10 * 1024 * mib) == 40 * mib  # 10 GiB / 256
    assert auto_chunk_bytes(1 << 40) == 256 * mib  # 1 TiB: the cap
    # a 12.5 MiB jsonl under the default: cut at line boundaries into chunks of at most 4 MiB (+ the line that ends one)
    line = json.dumps({"text": "x" * 1000}) + "\n"
    path = tmp_path / "docs.jsonl"
    path.write_text(line * (int(12.5 * mib) // len(line)))
    chunks = plan_chunks([path], "text", auto_chunk_bytes(path.stat().st_size))
    sizes = [sum(p.end - p.start for p in c.pieces) for c in chunks]
    assert len(chunks) == 4 and sum(sizes) == path.stat().st_size and max(sizes) <= 4 * mib + len(line), sizes


def test_shard_writer_descriptors_raise_the_limit_or_reopen(tmp_path, monkeypatch):
    """A shard's writer reads every run of the corpus: it raises its open-file limit to the hard limit, and
    otherwise keeps at most half of what it has open, reopening the rest as needed (cluster/README.md)."""
    import os
    import resource

    from bigtrain.data.runs import Descriptors

    files = []
    for i in range(40):
        files.append(tmp_path / f"run{i}")
        files[-1].write_bytes(bytes([i]) * 100)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    d = Descriptors(limit=16)
    for _ in range(2):
        for i, f in enumerate(files):
            assert d.pread(str(f), 10, 50) == bytes([i]) * 10
            assert fds() - before <= 16
    d.close()
    assert fds() == before

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (64, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, v: calls.append(v))
    assert Descriptors().limit == 2048 and calls == [(4096, 4096)]

    def refuse(_, v):
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert Descriptors().limit == 32  # half the soft limit it has to keep
