"""Checkpoints that cannot be torn.

Layout: ``RUN/checkpoints/step_00000010/{DeepSpeed files, tokenizer/, bigtrain.json}`` and
``RUN/checkpoints/latest``. A save writes DeepSpeed's files, then ``bigtrain.json`` (config, step, data
position, and the size and sha256 of every other file) under a temporary name and renames it, and only
then moves ``latest``. A directory without a readable ``bigtrain.json`` is an interrupted save; one whose
files do not match their checksums is damaged. Resuming takes the newest checkpoint that verifies and
says why any newer one was passed over.

Durability: every rank ``fsync``s its DeepSpeed files as it writes them (checkpoint/torch_engine.py) and then
the directories holding them; rank 0 syncs the checkpoint directory after renaming ``bigtrain.json`` into it
and ``checkpoints/`` after moving ``latest``, so after a power loss ``latest`` never names a checkpoint whose
files did not reach the disk.

Test hook: ``BIGTRAIN_FAULT_KILL_IN_SAVE=STEP:POINT[:RANK]`` makes RANK (default 0) SIGKILL itself once, in
the save of step STEP, at POINT: ``ds-bytes=N`` (after exactly N bytes of its DeepSpeed files), ``before-meta``
(its DeepSpeed files written and synced), ``after-meta`` (``bigtrain.json`` in place, ``latest`` not moved;
rank 0 only) or ``after-latest`` (``latest`` moved, older checkpoints not pruned; rank 0 only). A marker file
in the run directory holding the spec keeps a restarted job (torchrun --max-restarts) from dying again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from bigtrain import __version__
from bigtrain.errors import BigtrainError
from bigtrain.io import atomic_write_json, atomic_write_text, read_json, sha256_file

META_FILE = "bigtrain.json"
TOKENIZER_SUBDIR = "tokenizer"  # a copy of the run's tokenizer, so a checkpoint stands alone
_TAG = re.compile(r"^step_(\d{8,})$")
FAULT_KILL_IN_SAVE = "BIGTRAIN_FAULT_KILL_IN_SAVE"
FAULT_KILL_MARKER = ".bigtrain-fault-kill-in-save"
KILL_POINTS = ("ds-bytes=N", "before-meta", "after-meta", "after-latest")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise BigtrainError(f"{ckpt_dir} is not a complete bigtrain checkpoint: {META_FILE} is missing")
    meta = read_json(path)
    for key in ("step", "config"):
        if key not in meta:
            raise BigtrainError(f"{path}: field {key!r} is missing")
    return meta


def step_dirs(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step_*`` directory under RUN, complete or not, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _TAG.match(d.name)) and d.is_dir()]
    return [d for _, d in sorted(found)]


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under RUN (those with a bigtrain.json), oldest first."""
    return [d for d in step_dirs(run_dir) if (d / META_FILE).is_file()]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint with a bigtrain.json (not verified: see :func:`latest_verified_checkpoint`)."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def checksum_files(ckpt_dir: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file but bigtrain.json; ``known`` (relative path → the same) holds what
    was hashed as it was written, and is trusted when the size still matches."""
    known = known or {}
    out = {}
    for p in sorted(ckpt_dir.rglob("*")):
        if not p.is_file() or p.name == META_FILE:
            continue
        rel, size = str(p.relative_to(ckpt_dir)), p.stat().st_size
        entry = known.get(rel)
        out[rel] = entry if entry and entry["bytes"] == size else {"bytes": size, "sha256": sha256_file(p)}
    return out


def verify_checkpoint(ckpt_dir: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    try:
        meta = read_meta(ckpt_dir)
    except BigtrainError as e:
        return str(e)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return f"{ckpt_dir / META_FILE} lists no files"
    for rel, want in files.items():
        p = ckpt_dir / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != want.get("bytes"):
            return f"{p} has {p.stat().st_size} bytes, expected {want.get('bytes')}"
        if sha256_file(p) != want.get("sha256"):
            return f"{p} does not match its sha256"
    return None


def latest_verified_checkpoint(run_dir: str | Path, log=print) -> Path | None:
    """Newest checkpoint under RUN that verifies; each newer one passed over is logged with its reason."""
    for d in reversed(step_dirs(run_dir)):
        reason = verify_checkpoint(d)
        if reason is None:
            return d
        log(f"checkpoint {d.name} passed over: {reason}")
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise BigtrainError(f"{p}: no complete checkpoint here (expected {META_FILE} or checkpoints/step_*/)")
    return latest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KillInSave:
    """The ``BIGTRAIN_FAULT_KILL_IN_SAVE`` test hook (see the module docstring)."""

    def __init__(self, spec: str, run_dir: Path):
        self.spec = spec
        self.marker = run_dir / FAULT_KILL_MARKER
        parts = spec.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            self.step, self.point = int(parts[0]), parts[1]
            self.rank = int(parts[2]) if len(parts) == 3 else 0
            self.nbytes = int(self.point.removeprefix("ds-bytes=")) if self.point.startswith("ds-bytes=") else None
        except ValueError:
            raise BigtrainError(f"{FAULT_KILL_IN_SAVE}={spec}: expected STEP:POINT[:RANK] with POINT one of "
                                f"{', '.join(KILL_POINTS)}") from None
        if (self.point not in KILL_POINTS[1:]) if self.nbytes is None else self.nbytes < 0:
            raise BigtrainError(f"{FAULT_KILL_IN_SAVE}={spec}: POINT must be one of {', '.join(KILL_POINTS)}")
        if self.point in ("after-meta", "after-latest") and self.rank != 0:
            raise BigtrainError(f"{FAULT_KILL_IN_SAVE}={spec}: only rank 0 writes bigtrain.json and latest")

    @classmethod
    def from_env(cls, run_dir: Path) -> KillInSave | None:
        spec = os.environ.get(FAULT_KILL_IN_SAVE, "")
        return cls(spec, run_dir) if spec else None

    def armed(self, step: int, rank: int) -> bool:
        return (step == self.step and rank == self.rank
                and not (self.marker.is_file() and self.marker.read_text() == self.spec))

    def die(self) -> None:
        self.marker.write_text(self.spec)
        print(f"{FAULT_KILL_IN_SAVE}={self.spec}: rank {self.rank} kills itself (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def at(self, point: str, step: int, rank: int) -> None:
        if point == self.point and self.armed(step, rank):
            self.die()


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep: int):
        self.run_dir = Path(run_dir)
        self.root = checkpoints_root(run_dir)
        self.keep = keep
        self.fault = KillInSave.from_env(self.run_dir)

    def save(self, engine, step: int, meta: dict[str, Any], tokenizer_files: list[Path] | None = None,
             adapters: dict[str, Any] | None = None, include_frozen: bool = True) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory.

        ``include_frozen=False`` leaves frozen parameters out of DeepSpeed's files (a LoRA run: its base is referenced,
        not copied); ``adapters`` (rank 0: canonical name → full fp32 tensor) go to ``adapter.safetensors``."""
        tag = tag_for(step)
        ckpt_dir = self.root / tag
        rank = dist.get_rank()
        if rank == 0 and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # an interrupted earlier save of this step
        dist.barrier()
        t0 = time.time()
        written = getattr(engine.checkpoint_engine, "written", None)
        if written is not None:
            written.clear()
        fault = self.fault if self.fault and self.fault.armed(step, rank) else None
        if fault and fault.nbytes is not None:
            from bigtrain.checkpoint.torch_engine import KillAfterBytes

            engine.checkpoint_engine.kill = KillAfterBytes(fault.nbytes, fault.die)
        # DeepSpeed's own `latest` would point at the tag before bigtrain.json exists; ours moves last.
        try:
            engine.save_checkpoint(str(self.root), tag=tag, client_state={"bigtrain_step": step}, save_latest=False,
                                   exclude_frozen_parameters=not include_frozen)
        finally:
            if fault and fault.nbytes is not None:
                engine.checkpoint_engine.kill = None
        # Each rank hashed and fsync-ed its own files as it wrote them (checkpoint/torch_engine.py); their
        # names are durable once their directories are synced too.
        here = ckpt_dir.resolve()
        mine = {str(Path(f).resolve().relative_to(here)): info for f, info in (written or {}).items()
                if Path(f).resolve().is_relative_to(here)}
        for d in sorted({(here / rel).parent for rel in mine}):
            _fsync(d)
        if fault:
            fault.at("before-meta", step, rank)
        hashed: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(hashed, mine)
        if rank == 0:
            if adapters is not None:
                from safetensors.torch import save_file

                from bigtrain.model.lora import ADAPTER_FILE

                save_file(adapters, str(ckpt_dir / ADAPTER_FILE), metadata={"format": "pt", "bigtrain": "lora"})
                _fsync(ckpt_dir / ADAPTER_FILE)
            if tokenizer_files:  # the files, not their directory: that may be a whole Hugging Face model's
                (ckpt_dir / TOKENIZER_SUBDIR).mkdir(exist_ok=True)
                for f in tokenizer_files:
                    shutil.copyfile(f, ckpt_dir / TOKENIZER_SUBDIR / Path(f).name)
                    _fsync(ckpt_dir / TOKENIZER_SUBDIR / Path(f).name)
                _fsync(ckpt_dir / TOKENIZER_SUBDIR)
            known = {k: v for d in hashed for k, v in d.items()}
            atomic_write_json(ckpt_dir / META_FILE, {**meta, "step": step, "bigtrain_version": __version__,
                                                     "saved_at": time.time(), "save_seconds": time.time() - t0,
                                                     "files": checksum_files(ckpt_dir, known)})
            _fsync(ckpt_dir)  # bigtrain.json's new name and the checkpoint's own, before latest can name it
            _fsync(self.root)
            if fault:
                fault.at("after-meta", step, rank)
            atomic_write_text(self.root / "latest", tag)
            _fsync(self.root)
            if fault:
                fault.at("after-latest", step, rank)
            self._prune()
        dist.barrier()
        return ckpt_dir

    def _prune(self) -> None:
        complete = complete_checkpoints(self.run_dir)
        for old in complete[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        newest = complete[-1].name if complete else ""
        for d in step_dirs(self.run_dir):  # leftovers of saves that were interrupted
            if d.name < newest and not (d / META_FILE).exists():
                shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def load(engine, ckpt_dir: Path, include_frozen: bool = True) -> None:
        """``include_frozen=False``: the files hold the trainable parameters only (a LoRA run); the frozen ones are
        already in place (the base weights)."""
        import pickle

        try:
            path, _ = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name, load_optimizer_states=True,
                                             load_lr_scheduler_states=False, load_module_strict=include_frozen)
        except pickle.UnpicklingError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BigtrainError(f"{ckpt_dir}: refused to load a file that is not plain tensors and containers "
                                f"(torch.load weights_only=True: {first[:160]})") from None
        if path is None:
            raise BigtrainError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
