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
