"""Run files: the sorted, tokenized output of one chunk that preprocess keeps on disk until shards are written.

One file holds named 1-D/2-D numpy arrays behind a small JSON header (``MAGIC``, header length, header, then
each array at a 64-byte aligned offset). A reader maps the file and slices what it needs, so a shard writer
reads only its key range of each run. Written to a temporary name and renamed, so a run file that exists is
whole.
"""

from __future__ import annotations

import json
import mmap
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

MAGIC = b"BTRUN001"
_ALIGN = 64


def write_run(path: str | Path, arrays: dict[str, np.ndarray]) -> int:
    """Write ``arrays`` to ``path`` atomically; returns the file's size."""
    path = Path(path)
    layout, offset = {}, 0
    for name, arr in arrays.items():
        layout[name] = [offset, arr.dtype.str, list(arr.shape)]
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
    header = json.dumps(layout, sort_keys=True).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + len(header).to_bytes(8, "little") + header)
        fh.write(b"\0" * (start - fh.tell()))
        for name, arr in arrays.items():
            fh.seek(start + layout[name][0])
            fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        fh.truncate(start + offset)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return start + offset


class Run:
    """A mapped run file; ``run[name]`` is a read-only view (no copy) of that array."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # the map outlives the descriptor
        if self._mm[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{self.path}: not a run file")
        n = int.from_bytes(self._mm[len(MAGIC):len(MAGIC) + 8], "little")
        self._layout = json.loads(self._mm[len(MAGIC) + 8:len(MAGIC) + 8 + n])
        self._start = -(-(len(MAGIC) + 8 + n) // _ALIGN) * _ALIGN

    def __getitem__(self, name: str) -> np.ndarray:
        offset, dtype, shape = self._layout[name]
        count = int(np.prod(shape)) if shape else 1
        return np.frombuffer(self._mm, dtype=np.dtype(dtype), count=count,
                             offset=self._start + offset).reshape(shape)

    def offset(self, name: str) -> int:
        """Where array ``name`` starts in the file (to read pieces of it without mapping them)."""
        return self._start + self._layout[name][0]

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:  # a view is still alive; the map goes when it does
            pass

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class Descriptors:
    """Open read-only descriptors of many files, at most ``limit`` at once (least recently used closed first):
    a shard's writer reads from every run of the corpus in key order."""

    def __init__(self, limit: int | None = None):
        if limit is None:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard != resource.RLIM_INFINITY else 1 << 16
            if soft != resource.RLIM_INFINITY and soft < want:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                    soft = want
                except (ValueError, OSError):
                    pass
            limit = max(16, (soft if soft != resource.RLIM_INFINITY else 1 << 16) // 2)
        self.limit = limit
        self._open: OrderedDict[str, int] = OrderedDict()

    def pread(self, path: str, size: int, offset: int) -> bytes:
        fd = self._open.get(path)
        if fd is None:
            if len(self._open) >= self.limit:
                os.close(self._open.popitem(last=False)[1])
            fd = self._open[path] = os.open(path, os.O_RDONLY)
        else:
            self._open.move_to_end(path)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{path}: short read ({len(data)} of {size} bytes at {offset})")
        return data

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
