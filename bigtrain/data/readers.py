"""Streaming document readers for the raw-text formats bigtrain accepts.

Formats, chosen by file name:

- ``.jsonl`` / ``.ndjson`` / ``.json`` (one JSON object per line), optionally compressed as ``.gz`` or
  ``.zst``: the document is the string under the text field (``--text-field``, default ``text``).
- ``.parquet``: the text column, streamed batch by batch within row groups (never a whole file in memory).
- ``.txt`` (optionally ``.txt.gz`` / ``.txt.zst``): **one document per file**. Files larger than
  :data:`MAX_TXT_DOC_BYTES` are cut at blank lines into several documents of about that size, so a
  huge text file never sits in memory whole.

A directory given as input stands for the files with those suffixes under it (recursively, sorted).

Problems with one document (invalid UTF-8, a line that is not JSON, a missing or non-string field,
empty text) are *counted skips*; problems with a whole file (missing, empty, truncated or corrupt
compressed stream, parquet without the column) raise :class:`BigtrainError` with a one-line message.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Iterator

from bigtrain.errors import BigtrainError

MAX_TXT_DOC_BYTES = 1 << 20
_JSONL = (".jsonl", ".ndjson", ".json")
_COMPRESSED = ("", ".gz", ".zst")
SUFFIXES = tuple(s + c for s in _JSONL + (".txt",) for c in _COMPRESSED) + (".parquet",)

# skip reasons (manifest keys)
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
NOT_TEXT = "not_text"
EMPTY_TEXT = "empty_text"


def detect_format(path: str | Path) -> str:
    """``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``parquet``, ``txt``, ``txt.gz`` or ``txt.zst``."""
    name = str(path).lower()
    for comp in (".gz", ".zst", ""):
        for base, kind in [(s, "jsonl") for s in _JSONL] + [(".txt", "txt")]:
            if name.endswith(base + comp):
                return kind + comp
    if name.endswith(".parquet"):
        return "parquet"
    raise BigtrainError(f"{path}: unknown input format (expected one of {', '.join(SUFFIXES)})")


def expand_inputs(paths: list[str]) -> list[Path]:
    """Check the inputs exist and expand directories; returns absolute paths, sorted, without duplicates."""
    if not paths:
        raise BigtrainError("--input: give at least one file or directory")
    out: set[Path] = set()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise BigtrainError(f"{p}: input path does not exist")
        if path.is_dir():
            found = [f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES)]
            if not found:
                raise BigtrainError(f"{p}: directory holds no input files ({', '.join(SUFFIXES)})")
            out.update(f.resolve() for f in found)
        else:
            detect_format(path)
            out.add(path.resolve())
    for f in out:
        if f.stat().st_size == 0:
            raise BigtrainError(f"{f}: empty file (expected documents)")
    return sorted(out)


def _open_binary(path: Path, fmt: str):
    if fmt.endswith(".gz"):
        return gzip.open(path, "rb")
    if fmt.endswith(".zst"):
        return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdRaw(io.RawIOBase):
    """Decompress all frames of a .zst file; a frame cut short raises EOFError (the zstandard stream
    reader silently stops there)."""

    def __init__(self, path: Path):
        import zstandard

        self._dctx = zstandard.ZstdDecompressor()
        self._fh = open(path, "rb")
        self._dobj, self._fed, self._out = self._dctx.decompressobj(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._out:
            chunk = self._fh.read(1 << 20)
            if not chunk:
                if self._fed and not self._dobj.eof:
                    raise EOFError("zstd frame ended before its end marker")
                return 0
            while chunk:
                self._fed = True
                self._out += self._dobj.decompress(chunk)
                if self._dobj.eof:
                    chunk = self._dobj.unused_data
                    self._dobj, self._fed = self._dctx.decompressobj(), False
                else:
                    chunk = b""
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _stream_error(path: Path, fmt: str, n: int, e: Exception) -> BigtrainError:
    what = "gzip" if fmt.endswith(".gz") else "zstd" if fmt.endswith(".zst") else "file"
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return BigtrainError(f"{path}: truncated or corrupt {what} data after {n} documents ({msg})")


def iter_documents(path: str | Path, text_field: str = "text",
                   row_groups: list[int] | None = None) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(text, None)`` per good document and ``(None, reason)`` per skipped one, in file order (of a
    parquet file, only ``row_groups`` when given)."""
    path = Path(path)
    if not path.is_file():
        raise BigtrainError(f"{path}: input path does not exist")
    fmt = detect_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, text_field, row_groups)
        return
    n = 0
    try:
        with _open_binary(path, fmt) as fh:
            if fmt.startswith("jsonl"):
                for raw in fh:
                    if not raw.strip():
                        continue
                    n += 1
                    yield _parse_json_line(raw, text_field)
            else:
                for chunk in _txt_chunks(fh):
                    n += 1
                    try:
                        text = chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        yield None, INVALID_UTF8
                        continue
                    yield (text, None) if text.strip() else (None, EMPTY_TEXT)
    except (EOFError, OSError, zlib.error) as e:
        raise _stream_error(path, fmt, n, e) from None
    except Exception as e:  # zstandard.ZstdError has no common base we can import lazily
        if type(e).__name__ == "ZstdError":
            raise _stream_error(path, fmt, n, e) from None
        raise


def iter_jsonl_range(path: str | Path, start: int, end: int,
                     text_field: str = "text") -> Iterator[tuple[str | None, str | None]]:
    """The documents of an uncompressed jsonl file whose line starts at a byte in ``[start, end)``: cutting a
    file at any offsets gives every line to exactly one range, so ranges are read by separate tasks."""
    path = Path(path)
    with open(path, "rb", buffering=1 << 20) as fh:
        pos = start
        if start > 0:
            fh.seek(start - 1)
            pos = start - 1 + len(fh.readline())  # the line holding byte start-1 belongs to the range before
        while pos < end:
            raw = fh.readline()
            if not raw:
                break
            pos += len(raw)
            if raw.strip():
                yield _parse_json_line(raw, text_field)


def _parse_json_line(raw: bytes, field: str) -> tuple[str | None, str | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, INVALID_UTF8
    try:
        obj = json.loads(line)
    except ValueError:
        return None, INVALID_JSON
    if not isinstance(obj, dict):
        return None, INVALID_JSON
    if field not in obj or obj[field] is None:
        return None, MISSING_FIELD
    text = obj[field]
    if not isinstance(text, str):
        return None, NOT_TEXT
    if not text.strip():
        return None, EMPTY_TEXT
    return text, None


def _txt_chunks(fh) -> Iterator[bytes]:
    """The whole file as one chunk, or pieces of about MAX_TXT_DOC_BYTES cut after blank lines."""
    buf: list[bytes] = []
    size = 0
    for line in fh:
        buf.append(line)
        size += len(line)
        if size >= MAX_TXT_DOC_BYTES and not line.strip():
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _open_parquet(path: Path, field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise BigtrainError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise BigtrainError(f"{path}: parquet file has no column {field!r} (columns: {', '.join(names)}); "
                            f"choose one with --text-field")
    col_type = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)
            or pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type)):
        raise BigtrainError(f"{path}: column {field!r} has type {col_type}, expected string")
    return pf, pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type)


def parquet_row_groups(path: str | Path, field: str) -> list[int]:
    """Uncompressed bytes of the text column in each row group (what chunking by row groups weighs)."""
    pf, _ = _open_parquet(Path(path), field)
    meta = pf.metadata
    col = pf.schema_arrow.names.index(field)
    return [meta.row_group(i).column(col).total_uncompressed_size for i in range(meta.num_row_groups)]


def _iter_parquet(path: Path, field: str,
                  row_groups: list[int] | None = None) -> Iterator[tuple[str | None, str | None]]:
    import pyarrow as pa

    pf, binary = _open_parquet(path, field)
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[field], row_groups=row_groups):
            for value in batch.column(0).to_pylist():
                n += 1
                if value is None:
                    yield None, MISSING_FIELD
                    continue
                if binary:
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:
                        yield None, INVALID_UTF8
                        continue
                yield (value, None) if value.strip() else (None, EMPTY_TEXT)
    except (pa.ArrowException, OSError) as e:
        raise BigtrainError(f"{path}: corrupt parquet data after {n} documents "
                            f"({str(e).splitlines()[0]})") from None
