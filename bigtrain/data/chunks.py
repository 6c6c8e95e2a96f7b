"""Cutting the inputs into chunks: the unit of work, of scheduling and of resume in ``bigtrain preprocess``.

A chunk is a list of pieces of about ``chunk_bytes`` of input in all, and the cut depends only on the inputs
(their sorted paths and sizes, parquet row-group sizes) and ``chunk_bytes``:

- an uncompressed jsonl file is cut into byte ranges; a range owns the lines that start inside it, so a big
  file is read by many tasks at once;
- a parquet file is cut into runs of consecutive row groups;
- a compressed file (``.gz``, ``.zst``) and a ``.txt`` file are read whole by one task (neither can be entered
  in the middle);
- consecutive small pieces (of small files, or a file's tail) are packed into one chunk.

Chunks are numbered in (path, offset) order, which is therefore also the order of the documents they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bigtrain.data import readers

RANGE, ROWS, WHOLE = "range", "rows", "whole"


@dataclass(frozen=True)
class Piece:
    src: int  # index of the input in the sorted input list
    path: str
    kind: str  # RANGE: bytes [start, end); ROWS: row groups [start, end); WHOLE: the whole file
    start: int = 0
    end: int = 0
    weight: int = 0  # input bytes it stands for (what packing weighs)


@dataclass(frozen=True)
class Chunk:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def bytes(self) -> int:
        return sum(p.weight for p in self.pieces)

    def describe(self) -> list[list]:
        return [[p.path, p.kind, p.start, p.end] for p in self.pieces]


def _pieces(src: int, path: Path, text_field: str, chunk_bytes: int) -> list[Piece]:
    fmt = readers.detect_format(path)
    size = path.stat().st_size
    if fmt == "jsonl":
        return [Piece(src, str(path), RANGE, a, min(a + chunk_bytes, size), min(a + chunk_bytes, size) - a)
                for a in range(0, size, chunk_bytes)]
    if fmt == "parquet":
        out, first, acc = [], 0, 0
        groups = readers.parquet_row_groups(path, text_field)
        for i, nbytes in enumerate(groups):
            if acc and acc + nbytes > chunk_bytes:
                out.append(Piece(src, str(path), ROWS, first, i, acc))
                first, acc = i, 0
            acc += nbytes
        if acc or first < len(groups):
            out.append(Piece(src, str(path), ROWS, first, len(groups), acc))
        return out
    return [Piece(src, str(path), WHOLE, 0, 0, size)]


def plan_chunks(files: list[Path], text_field: str, chunk_bytes: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[Piece] = []
    acc = 0
    for src, path in enumerate(files):
        for piece in _pieces(src, path, text_field, chunk_bytes):
            if current and acc + piece.weight > chunk_bytes:
                chunks.append(Chunk(len(chunks), tuple(current)))
                current, acc = [], 0
            current.append(piece)
            acc += piece.weight
    if current:
        chunks.append(Chunk(len(chunks), tuple(current)))
    return chunks


def auto_chunk_bytes(total_bytes: int) -> int:
    """About 256 chunks per corpus, between 4 MiB (enough work per task to hide its overhead) and 256 MiB (a
    task's memory stays small, and a failure redoes little)."""
    return int(min(256 << 20, max(4 << 20, total_bytes // 256)))


def iter_chunk(chunk: Chunk, text_field: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(src, text, None)`` per good document and ``(src, None, reason)`` per skipped one, in order."""
    for p in chunk.pieces:
        if p.kind == RANGE:
            docs = readers.iter_jsonl_range(p.path, p.start, p.end, text_field)
        elif p.kind == ROWS:
            docs = readers.iter_documents(p.path, text_field, row_groups=list(range(p.start, p.end)))
        else:
            docs = readers.iter_documents(p.path, text_field)
        for text, reason in docs:
            yield p.src, text, reason
