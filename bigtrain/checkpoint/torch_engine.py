"""The checkpoint engine bigtrain gives DeepSpeed: safe loading, and saving that hashes and syncs as it writes.

Loading: DeepSpeed unpickles its files with ``weights_only=False``, which runs any code a crafted file
carries. Its files hold only tensors, containers and a few DeepSpeed value types, so the restricted
unpickler suffices once those types are allow-listed.

Saving: each rank records the size and sha256 of every file it writes, so bigtrain.json's checksums need
no second read of the checkpoint by rank 0 (at scale: every rank's files, serially). The hash of a chunk
runs on a thread while the chunk is written, and the file is handed to the disk (``fdatasync``) every
``SYNC_EVERY`` bytes while serialisation goes on, then ``fsync``-ed: a checkpoint is durable when
``save`` returns, at about the disk's speed rather than serialisation time plus flush time.

Test hook: :class:`KillAfterBytes` (set by ``BIGTRAIN_FAULT_KILL_IN_SAVE=STEP:ds-bytes=N``, see
checkpoint/manager.py) puts exactly N bytes of a save on disk and then kills the process, so a test knows
where inside DeepSpeed's files the save stopped.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

SYNC_EVERY = 128 << 20


def _safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


class KillAfterBytes:
    """Test hook: ``die()`` once ``left`` more bytes of this rank's save are written (over all its files)."""

    def __init__(self, left: int, die: Callable[[], None]):
        self.left, self.die = left, die

    def before_write(self, f, view: memoryview) -> None:
        if len(view) < self.left:
            self.left -= len(view)
            return
        head = view[:self.left]
        done = 0
        while done < len(head):
            done += f.write(head[done:])
        self.die()


class _HashingFile:
    """A write-only file object for ``torch.save``: sha256 on a helper thread, periodic ``fdatasync``."""

    def __init__(self, path: str, pool: ThreadPoolExecutor, kill: KillAfterBytes | None = None):
        self.f = open(path, "wb", buffering=0)
        self.pool = pool
        self.kill = kill
        self.sha = hashlib.sha256()
        self.size = 0
        self.unsynced = 0
        self.syncing: Future | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.kill is not None:
            self.kill.before_write(self.f, view)
        # hashlib and the write both release the GIL; the view stays valid until both are done.
        hashing = self.pool.submit(self.sha.update, view)
        done = 0
        while done < len(view):
            done += self.f.write(view[done:])
        hashing.result()
        self.size += len(view)
        self.unsynced += len(view)
        if self.unsynced >= SYNC_EVERY and (self.syncing is None or self.syncing.done()):
            self.syncing = self.pool.submit(os.fdatasync, self.f.fileno())
            self.unsynced = 0
        return len(view)

    def flush(self) -> None:
        pass

    def close(self) -> dict[str, Any]:
        if self.syncing is not None:
            self.syncing.result()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"bytes": self.size, "sha256": self.sha.hexdigest()}


class BigtrainCheckpointEngine(TorchCheckpointEngine):
    written: dict[str, dict[str, Any]]
    """Absolute path → {"bytes", "sha256"} of each file saved since the caller last cleared it."""
    kill: KillAfterBytes | None = None

    def save(self, state_dict, path: str):
        with ThreadPoolExecutor(2, thread_name_prefix="bigtrain-ckpt") as pool:
            f = _HashingFile(path, pool, self.kill)
            try:
                torch.save(state_dict, f, _use_new_zipfile_serialization=self.zipfile_serialization)
            finally:
                info = f.close()
        self.written[os.path.abspath(path)] = info

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def install(engine) -> None:
    """Swap the engine's DeepSpeed checkpoint engine for bigtrain's."""
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        ours = BigtrainCheckpointEngine.__new__(BigtrainCheckpointEngine)
        ours.__dict__.update(engine.checkpoint_engine.__dict__)
        ours.written = {}
        engine.checkpoint_engine = ours
