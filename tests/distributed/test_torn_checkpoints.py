"""Checkpoints cannot be torn. A process killed (SIGKILL) at each point of a save (inside DeepSpeed's file
writes, before bigtrain.json, after it but before ``latest`` moves, after ``latest``) leaves exactly what the
order of the save promises, ``latest`` never names a checkpoint that does not verify, and the rerun resumes
from the newest intact checkpoint and reproduces the uninterrupted run's losses. A damaged newest checkpoint
is passed over with its reason logged.

The kills come from the BIGTRAIN_FAULT_KILL_IN_SAVE hook (checkpoint/manager.py), so each lands where it is
meant to; the byte offsets inside DeepSpeed's files are drawn from BIGTRAIN_TEST_SEED and printed.
"""

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from bigtrain.checkpoint.manager import FAULT_KILL_IN_SAVE
from bigtrain.io import sha256_file
from tests.helpers import TINY, bigtrain, env_for_tests, losses

ARGS = ["train.max_steps=10", "checkpoint.interval=2", "checkpoint.keep=3", "model.n_layers=2",
        "train.log_interval=1"]
SEED = int(os.environ.get("BIGTRAIN_TEST_SEED", "18"))
DP2 = ["parallel.zero_stage=1"]


def step(n: int) -> str:
    return f"step_{n:08d}"


def intact(d: Path) -> bool:
    """Independent of bigtrain's code: bigtrain.json lists files that are all there and match."""
    meta_path = d / "bigtrain.json"
    if not meta_path.is_file():
        return False
    files = json.loads(meta_path.read_text())["files"]
    return bool(files) and all((d / f).is_file() and sha256_file(d / f) == v["sha256"] for f, v in files.items())


def latest(run: Path) -> str | None:
    p = run / "checkpoints" / "latest"
    return p.read_text() if p.exists() else None


def ds_sizes(ckpt: Path, rank_files: str = "") -> dict[str, int]:
    """Sizes of DeepSpeed's files in a step directory (those whose name contains ``rank_files``)."""
    return {p.name: p.stat().st_size for p in ckpt.glob("*.pt") if rank_files in p.name}


def train(run: Path, *extra: str, kill: str | None = None, nproc: int = 1):
    env = env_for_tests()
    if kill:
        env[FAULT_KILL_IN_SAVE] = kill
    # a rank killed among several: torchrun's report of it is part of what is checked
    proc = bigtrain("train", TINY, "--run-dir", str(run), *ARGS, *extra, nproc=nproc, env=env, check=kill is None,
                    fresh=bool(kill) and nproc > 1)
    ptr = latest(run)
    assert ptr is None or intact(run / "checkpoints" / ptr), f"latest names {ptr}, which does not verify"
    return proc


def assert_killed(proc, spec: str, rank: int = 0) -> None:
    """The hook fired, and nothing of the run came after it."""
    line = f"{FAULT_KILL_IN_SAVE}={spec}: rank {rank} kills itself (SIGKILL)"
    out = proc.stdout.strip().splitlines()
    if rank == 0:
        assert proc.returncode == -9 and out[-1] == line, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    else:  # torchrun reports the dead rank and stops the others
        assert proc.returncode != 0 and line in out and "Signal 9 (SIGKILL)" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("torn") / "ref"
    train(run)
    return run


def test_kill_at_each_point_of_a_save(tmp_path, ref):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    total = sum(ds_sizes(ref / "checkpoints" / step(6)).values())
    nbytes = random.Random(SEED).randrange(1, total)
    print(f"BIGTRAIN_TEST_SEED={SEED}: kill after {nbytes} of the {total} bytes of DeepSpeed's files of step 2")

    spec = f"2:ds-bytes={nbytes}"
    assert_killed(train(run, kill=spec), spec)
    assert not (ckpts / step(2) / "bigtrain.json").exists() and latest(run) is None
    assert sum(ds_sizes(ckpts / step(2)).values()) == nbytes

    spec = "4:before-meta"
    out = train(run, kill=spec)
    assert_killed(out, spec)
    assert f"checkpoint {step(2)} passed over: {ckpts / step(2)} is not a complete" in out.stdout
    assert "resumed from" not in out.stdout
    assert ds_sizes(ckpts / step(4)) == ds_sizes(ref / "checkpoints" / step(6))  # every file whole, synced
    assert not (ckpts / step(4) / "bigtrain.json").exists() and latest(run) == step(2)

    spec = "6:after-meta"
    out = train(run, kill=spec)
    assert_killed(out, spec)
    assert f"checkpoint {step(4)} passed over" in out.stdout
    assert f"resumed from {ckpts / step(2)} at step 2" in out.stdout
    assert intact(ckpts / step(6)) and latest(run) == step(4)  # bigtrain.json is in place, latest has not moved

    spec = "8:after-latest"
    out = train(run, kill=spec)
    assert_killed(out, spec)
    assert f"resumed from {ckpts / step(6)} at step 6" in out.stdout  # the newest that verifies, not latest
    assert latest(run) == step(8)
    assert sorted(p.name for p in ckpts.glob("step_*")) == [step(n) for n in (2, 4, 6, 8)]  # killed before pruning

    out = train(run)
    assert f"resumed from {ckpts / step(8)} at step 8" in out.stdout
    assert losses(run) == losses(ref)
    assert latest(run) == step(10) and sorted(p.name for p in ckpts.glob("step_*")) == [step(n) for n in (6, 8, 10)]


def test_kill_one_rank_inside_a_dp2_save(tmp_path, ref):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # Rank 1's file holds half the optimizer state, about half of one process's checkpoint: a quarter of that
    # is inside it (and assert_killed fails should the hook never fire).
    nbytes = random.Random(SEED + 1).randrange(1, sum(ds_sizes(ref / "checkpoints" / step(6)).values()) // 4)
    print(f"BIGTRAIN_TEST_SEED={SEED}: kill rank 1 after {nbytes} bytes of its DeepSpeed files of step 4")

    spec = f"4:ds-bytes={nbytes}:1"
    assert_killed(train(run, *DP2, kill=spec, nproc=2), spec, rank=1)
    assert not (ckpts / step(4) / "bigtrain.json").exists() and latest(run) == step(2)
    assert sum(ds_sizes(ckpts / step(4), "zero_pp_rank_1_").values()) == nbytes
    uninterrupted = losses(run)  # steps 1..4 are logged before step 4's save starts
    assert len(uninterrupted) == 4

    out = train(run, *DP2, "train.stop_after=4", nproc=2)
    assert f"checkpoint {step(4)} passed over" in out.stdout
    assert f"resumed from {ckpts / step(2)} at step 2" in out.stdout
    assert losses(run) == uninterrupted and intact(ckpts / step(4))


def test_damaged_newest_checkpoint_is_passed_over(tmp_path, ref):
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    ckpts = run / "checkpoints"
    # step 10: one byte of a model file changed (its size still matches); step 8: a model file cut short.
    flipped = ckpts / step(10) / "mp_rank_00_model_states.pt"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut = ckpts / step(8) / "mp_rank_00_model_states.pt"
    cut.write_bytes(cut.read_bytes()[:100])
    out = train(run)
    assert f"checkpoint {step(10)} passed over: {flipped} does not match its sha256" in out.stdout
    assert f"checkpoint {step(8)} passed over: {cut} has 100 bytes" in out.stdout
    assert f"resumed from {ckpts / step(6)} at step 6" in out.stdout
    assert losses(run) == losses(ref)  # the replayed steps 7..10 reproduce the original ones
