"""Checkpoints: DeepSpeed's files plus ``bigtrain.json``, which is written last and marks completion.

Layout: ``RUN/checkpoints/step_00000010/{DeepSpeed files, bigtrain.json}``. A directory without a
readable ``bigtrain.json`` is an interrupted save and is never resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from bigtrain import __version__
from bigtrain.errors import BigtrainError
from bigtrain.io import atomic_write_json

META_FILE = "bigtrain.json"
TOKENIZER_SUBDIR = "tokenizer"  # a copy of the run's tokenizer, so a checkpoint stands alone
_TAG = re.compile(r"^step_(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise BigtrainError(f"{ckpt_dir} is not a complete bigtrain checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BigtrainError(f"{path}: not valid JSON") from None
    for key in ("step", "config"):
        if key not in meta:
            raise BigtrainError(f"{path}: field {key!r} is missing")
    return meta


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under RUN, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _TAG.match(d.name)
        if m and d.is_dir() and (d / META_FILE).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise BigtrainError(f"{p}: no complete checkpoint here (expected {META_FILE} or checkpoints/step_*/)")
    return latest


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep: int):
        self.run_dir = Path(run_dir)
        self.root = checkpoints_root(run_dir)
        self.keep = keep

    def save(self, engine, step: int, meta: dict[str, Any], tokenizer_dir: str | Path | None = None) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        tag = tag_for(step)
        ckpt_dir = self.root / tag
        rank = dist.get_rank()
        if rank == 0 and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # an interrupted earlier save of this step
        dist.barrier()
        t0 = time.time()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"bigtrain_step": step})
        dist.barrier()
        if rank == 0:
            if tokenizer_dir is not None:
                src = Path(tokenizer_dir)
                src = src if src.is_dir() else src.parent
                shutil.copytree(src, ckpt_dir / TOKENIZER_SUBDIR, dirs_exist_ok=True)
            atomic_write_json(ckpt_dir / META_FILE, {**meta, "step": step, "bigtrain_version": __version__,
                                                     "saved_at": time.time(), "save_seconds": time.time() - t0})
            self._prune()
        dist.barrier()
        return ckpt_dir

    def _prune(self) -> None:
        for old in complete_checkpoints(self.run_dir)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def load(engine, ckpt_dir: Path) -> None:
        path, _ = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise BigtrainError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
