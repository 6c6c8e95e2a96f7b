"""WebDataset shards of token ids: deterministic writing, fast reading, and the dataset manifest.

A preprocessed dataset directory holds ``manifest.json`` and tar shards under ``train/`` and
``heldout/``. Each sample of a shard is one document: a tar member ``<key>.tokens.npy`` holding the
document's token ids (uint16 when the vocabulary fits, else uint32) with EOS appended. ``<key>`` is
the first 32 hex digits of the sha256 of the document's UTF-8 text; samples are sorted by key. Tar
headers carry no time, owner or mode that depends on the machine, so shards are byte-identical
whenever their documents are. Any WebDataset reader can open them (``.npy`` decodes to an array).
"""

from __future__ import annotations

import ast
import hashlib
import io
import mmap
import os
import struct
import tarfile
import uuid
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.errors import BigtrainError
from bigtrain.io import atomic_write_bytes, read_json, sha256_file  # noqa: F401 (preprocess imports sha256_file from here)

MANIFEST = "manifest.json"
FORMAT = "bigtrain-webdataset-tokens-v1"
SPLITS = ("train", "heldout")
SUFFIX = ".tokens.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """A member's header: nothing in it depends on the machine (mtime 0, uid/gid 0, mode 0644)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def shard_bytes(samples: list[tuple[str, np.ndarray]]) -> bytes:
    """A USTAR tar of ``<key>.tokens.npy`` members with fixed metadata (mtime 0, uid/gid 0, mode 0644)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, arr in samples:
            data = npy_bytes(arr)
            tf.addfile(_member_info(key + SUFFIX, len(data)), io.BytesIO(data))
    return out.getvalue()


atomic_write = atomic_write_bytes  # the name preprocessing uses


def _member_header(name: str, size: int) -> bytes:
    return _member_info(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": (n,)})
    return buf.getvalue()


class ShardWriter:
    """Streams samples into a shard file, byte-identical to :func:`shard_bytes` of the same samples, without
    holding the shard in memory. Written to a temporary name, hashed as it goes, fsync-ed and renamed on
    :meth:`close`; :meth:`abort` (or an exception inside ``with``) leaves nothing at ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._fh = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self.bytes = self.samples = self.tokens = 0

    def _put(self, data) -> None:
        self._fh.write(data)
        self._sha.update(data)
        self.bytes += len(data)

    def add(self, key: str, tokens: np.ndarray) -> None:
        body = _npy_header(tokens.dtype, len(tokens))
        size = len(body) + tokens.nbytes
        self._put(_member_header(key + SUFFIX, size))
        self._put(body)
        self._put(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self._put(b"\0" * pad)
        self.samples += 1
        self.tokens += len(tokens)

    def close(self) -> str:
        """Finish the archive the way :mod:`tarfile` does (two zero blocks, padded to a whole record); returns
        the sha256 of the file."""
        end = 2 * tarfile.BLOCKSIZE
        self._put(b"\0" * (end + (-(self.bytes + end) % tarfile.RECORDSIZE)))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self._sha.hexdigest()

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, *_exc) -> None:
        if kind is not None:
            self.abort()


def shard_file_bytes(token_bytes: int) -> int:
    """Bytes one sample of ``token_bytes`` bytes of tokens takes in a shard (header, .npy header, padding)."""
    return tarfile.BLOCKSIZE + -(-(128 + token_bytes) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class MappedShard:
    """A shard's token stream, read in place through a read-only memory map.

    Only the index is held in memory: per document, where its tokens start in the shard's stream and
    which bytes of the file hold them. Tokens are copied out of the map on request, so a loader touches
    only the pages of the windows it reads, and no shard is ever decoded whole.
    """

    def __init__(self, path: Path, buf, keys: list[str] | None, dtype: np.dtype, starts: array, lo: array,
                 hi: array):
        self.path, self.keys, self.dtype = path, keys, dtype
        self._map, self._starts, self._lo, self._hi = buf, starts, lo, hi
        self._item = dtype.itemsize
        self._flat = np.frombuffer(buf, dtype=dtype, count=len(buf) // self._item)
        self.n_tokens = starts[-1]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.frombuffer(self._starts, dtype=np.int64))

    def tokens(self) -> np.ndarray:
        """The whole token stream, decoded (a copy)."""
        item, flat = self._item, self._flat
        pieces = [flat[x // item:y // item] for x, y in zip(self._lo, self._hi)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def copy(self, a: int, b: int, out: np.ndarray) -> None:
        """Tokens ``[a, b)`` of the shard's stream into ``out`` (``b - a`` long, any integer dtype)."""
        starts, lo, hi, item = self._starts, self._lo, self._hi, self._item
        j = bisect_right(starts, a) - 1
        k = bisect_left(starts, b, j + 1)  # documents j .. k-1 hold the range
        first = lo[j] + (a - starts[j]) * item
        if k == j + 1:
            out[:] = self._flat[first // item:first // item + b - a]
            return
        # A bytes slice per document and one join: faster than numpy views and a concatenate (measured),
        # which matters when a window spans dozens of short documents.
        mm = self._map
        parts = [mm[first:hi[j]]]
        parts += [mm[x:y] for x, y in zip(lo[j + 1:k - 1], hi[j + 1:k - 1])]
        parts.append(mm[lo[k - 1]:lo[k - 1] + (b - starts[k - 1]) * item])
        out[:] = np.frombuffer(b"".join(parts), dtype=self.dtype)

    def doc_starts(self, a: int, b: int) -> list[int]:
        """Where documents begin strictly inside ``(a, b)`` of the shard's stream, relative to ``a``."""
        starts = self._starts
        return [x - a for x in starts[bisect_right(starts, a):bisect_left(starts, b)]]

    def release(self) -> None:
        """Drop the pages read so far from this process's resident memory (they stay in the page cache and
        are mapped again when read), so a pass over a shard does not leave all of it resident."""
        _release(self._map)


_ZERO_BLOCK = b"\0" * 512
_SUFFIX = SUFFIX.encode()
_TAR = struct.Struct("100s24x12s20xc")  # a USTAR header's name, size and type
_NPY = struct.Struct("<6sBxH")  # a .npy header's magic, major version and (version 1) header length
_RELEASE_BYTES = 1 << 24  # hashing and indexing a shard keep at most this much of it resident


def _release(buf) -> None:
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        buf.madvise(mmap.MADV_DONTNEED)


def _check_sha256(path: Path, buf, sha256: str) -> None:
    h = hashlib.sha256()
    with memoryview(buf) as view:
        for a in range(0, len(buf), _RELEASE_BYTES):
            h.update(view[a:a + _RELEASE_BYTES])
            _release(buf)
    if h.hexdigest() != sha256:
        raise BigtrainError(f"{path}: shard's sha256 is not the one in the manifest; it changed after "
                            "preprocessing (re-run `bigtrain preprocess`)")


def _member_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode()
    prefix = header[345:500].split(b"\0", 1)[0].decode()
    return prefix + "/" + name if prefix else name


def _npy_text(buf, start: int, header: int) -> tuple[int, int]:
    """Where the .npy header text of the member whose data starts at ``start`` begins and ends (the array
    data starts at its end)."""
    magic, major, hlen = _NPY.unpack_from(buf, start)
    if magic != b"\x93NUMPY":
        raise ValueError(f"member {_member_name(buf[header:start])} is not a .npy array")
    if major != 1:
        return start + 12, start + 12 + int.from_bytes(buf[start + 8:start + 12], "little")
    return start + 10, start + 10 + hlen


def _index(buf, want_keys: bool) -> tuple[list[str] | None, np.dtype, array, array, array]:
    """Walk the tar headers, never the token data: (keys, dtype, stream offset of each document plus the
    total, first and end byte of each document's tokens in the file). The first member's .npy header
    gives the dtype; every other member must have the same one. Kept lean: it runs on every shard open."""
    keys: list[str] | None = [] if want_keys else None
    lo, hi = array("q"), array("q")
    dtype = descr = None
    pos, size, release_at, align = 0, len(buf), _RELEASE_BYTES, 0
    while pos + 512 <= size:
        if pos >= release_at:  # a page per document was mapped: keep the walk from making the file resident
            _release(buf)
            release_at = pos + _RELEASE_BYTES
        name, octal, typeflag = _TAR.unpack_from(buf, pos)
        if not name[0] and buf[pos:pos + 512] == _ZERO_BLOCK:
            break
        member = int(octal.split(b"\0", 1)[0].strip() or b"0", 8)
        start, end = pos + 512, pos + 512 + member
        header, pos = pos, start + (member + 511) // 512 * 512
        if typeflag not in (b"0", b"\0") or not name.split(b"\0", 1)[0].endswith(_SUFFIX):
            continue
        text, data = _npy_text(buf, start, header)
        if dtype is None:
            meta = buf[text:data]
            dtype, descr = np.dtype(ast.literal_eval(meta.decode("latin1"))["descr"]), meta.split(b"'shape'")[0]
            align = dtype.itemsize - 1
        if buf[text:text + len(descr)] != descr or not data <= end <= size or (data | end) & align:
            raise ValueError(f"member {_member_name(buf[header:start])} does not hold whole {dtype} tokens "
                             "(the first member's dtype) within the file")
        lo.append(data)
        hi.append(end)
        if want_keys:
            keys.append(_member_name(buf[header:start])[: -len(SUFFIX)])
    _release(buf)
    dtype = dtype or np.dtype("<u2")
    counts = (np.frombuffer(hi, dtype=np.int64) - np.frombuffer(lo, dtype=np.int64)) // dtype.itemsize
    starts = array("q", [0])
    starts.frombytes(np.cumsum(counts).tobytes())
    return keys, dtype, starts, lo, hi


def open_shard(path: str | Path, sha256: str | None = None, keys: bool = False) -> MappedShard:
    """Map a shard read-only and index it (see :class:`MappedShard`); with ``sha256``, the file is first
    hashed through the map, a block at a time, and checked against it, so a shard changed since
    preprocessing is refused. With ``keys``, the documents' keys are kept too (a loader does not need them)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if sha256 is not None:
            _check_sha256(path, buf, sha256)
        return MappedShard(path, buf, *_index(buf, keys))
    except OSError as e:
        raise BigtrainError(f"{path}: cannot read shard ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError, SyntaxError, KeyError, TypeError, struct.error) as e:
        raise BigtrainError(f"{path}: corrupt shard ({e})") from None


def read_shard(path: str | Path, sha256: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Decode a shard: (keys, document lengths int64, all tokens concatenated in shard order); with ``sha256``,
    the file is checked against it first (a shard changed since preprocessing is refused)."""
    shard = open_shard(path, sha256, keys=True)
    return shard.keys, shard.lengths, shard.tokens()


def load_manifest(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    m = d / MANIFEST
    if not d.is_dir():
        raise BigtrainError(f"{d}: dataset directory not found")
    if not m.is_file():
        raise BigtrainError(f"{d}: no {MANIFEST} (not a finished `bigtrain preprocess` output)")
    manifest = read_json(m)
    if manifest.get("format") != FORMAT:
        raise BigtrainError(f"{m}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def is_dataset_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
