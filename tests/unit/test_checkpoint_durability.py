"""What a save puts on disk, and in which order (README, Reliability): every DeepSpeed file is hashed and
fsync-ed as it is written, bigtrain.json is written after them, and ``checkpoints/latest`` moves last.

A real DeepSpeed engine (ZeRO stage 0, one process, gloo) saves through bigtrain's CheckpointManager in a
child process that records every fsync, fdatasync and rename with the path it touched: the order is
observed, not inferred from the result. A child, because DeepSpeed and the process group are process-wide
state this test must not leave behind in pytest's process.
"""

import json
import subprocess
import sys

import pytest

from bigtrain.checkpoint.manager import FAULT_KILL_MARKER, KillInSave
from bigtrain.errors import BigtrainError
from bigtrain.io import sha256_file
from tests.helpers import REPO, env_for_tests

SYNC_EVERY = 64 << 10

CHILD = r"""
import json, os, sys
from pathlib import Path

out = Path(sys.argv[1])
events = []  # [what, path, size of the file at that moment]
_fsync, _fdatasync, _replace = os.fsync, os.fdatasync, os.replace


def _path(fd):
    return os.readlink(f"/proc/self/fd/{fd}")


def fsync(fd):
    events.append(["fsync", _path(fd), os.fstat(fd).st_size])
    _fsync(fd)


def fdatasync(fd):
    events.append(["fdatasync", _path(fd), os.fstat(fd).st_size])
    _fdatasync(fd)


def replace(src, dst):
    _replace(src, dst)
    events.append(["replace", str(Path(dst).resolve()), 0])


os.fsync, os.fdatasync, os.replace = fsync, fdatasync, replace

import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=0, world_size=1)
import deepspeed

from bigtrain.checkpoint import torch_engine
from bigtrain.checkpoint.manager import CheckpointManager

torch_engine.SYNC_EVERY = int(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                  config={"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                                          "zero_optimization": {"stage": 0}}, dist_init_required=False)
torch_engine.install(engine)
engine.backward(engine(torch.randn(1, 256)).square().sum())
engine.step()  # so the optimizer state (Adam moments) is saved too
tok = out / "tokenizer.model"
tok.write_bytes(os.urandom(5000))
manager = CheckpointManager(out / "run", keep=2)
del events[:]
manager.save(engine, 1, {"config": {}}, tokenizer_files=[tok])
written = engine.checkpoint_engine.written
(out / "events.json").write_text(json.dumps({"events": events, "written": written}))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("durability")
    env = env_for_tests()
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), str(SYNC_EVERY)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((out / "events.json").read_text())
    ckpt = (out / "run" / "checkpoints" / "step_00000001").resolve()
    meta = json.loads((ckpt / "bigtrain.json").read_text())
    ds_files = [ckpt / rel for rel in meta["files"] if not rel.startswith("tokenizer/")]
    return rec["events"], rec["written"], ckpt, meta, ds_files


def _index(events, what, path) -> list[int]:
    return [i for i, (w, p, _) in enumerate(events) if w == what and p == str(path)]


def test_deepspeed_files_are_hashed_and_fsynced_as_written(saved):
    events, written, ckpt, meta, ds_files = saved
    assert any(p.name.endswith("model_states.pt") for p in ds_files), sorted(meta["files"])
    for p in ds_files:
        size = p.stat().st_size
        assert size > 3 * SYNC_EVERY, (p, size)  # big enough that the periodic fdatasync must have run
        syncs = [e for e in events if e[1] == str(p)]
        kinds = [w for w, _, _ in syncs]
        assert "fdatasync" in kinds and kinds.count("fsync") == 1 and kinds[-1] == "fsync", (p.name, kinds)
        assert syncs[-1][2] == size, (p.name, syncs[-1])  # the fsync came after the file's last byte
        # The checksum was taken from the bytes as they went out, not from a later read of the file.
        assert written[str(p)] == {"bytes": size, "sha256": sha256_file(p)}, p.name
        assert meta["files"][str(p.relative_to(ckpt))] == written[str(p)]


def test_bigtrain_json_after_deepspeed_files_and_latest_last(saved):
    events, _, ckpt, meta, ds_files = saved
    root = ckpt.parent
    tokenizer_copy = ckpt / "tokenizer" / "tokenizer.model"
    assert "tokenizer/tokenizer.model" in meta["files"]
    (meta_i,) = _index(events, "replace", ckpt / "bigtrain.json")
    (latest_i,) = _index(events, "replace", root / "latest")
    ds_synced = max(_index(events, "fsync", p)[-1] for p in ds_files)
    ckpt_dir_syncs = _index(events, "fsync", ckpt)
    root_syncs = _index(events, "fsync", root)
    # DeepSpeed's files' data and names on disk, then bigtrain.json, its name on disk, then latest.
    assert any(ds_synced < i < meta_i for i in ckpt_dir_syncs), (ds_synced, ckpt_dir_syncs, meta_i)
    assert _index(events, "fsync", tokenizer_copy)[-1] < meta_i
    assert any(meta_i < i < latest_i for i in ckpt_dir_syncs), (meta_i, ckpt_dir_syncs, latest_i)
    assert any(meta_i < i < latest_i for i in root_syncs), (meta_i, root_syncs, latest_i)
    assert any(i > latest_i for i in root_syncs), (latest_i, root_syncs)
    assert latest_i == max(i for i, e in enumerate(events) if e[0] == "replace")
    assert (root / "latest").read_text() == ckpt.name


@pytest.mark.parametrize("spec, want", [
    ("4", "expected STEP:POINT[:RANK]"), ("x:before-meta", "expected STEP:POINT[:RANK]"),
    ("4:ds-bytes=x", "expected STEP:POINT[:RANK]"), ("4:mid-save", "POINT must be one of"),
    ("4:ds-bytes=-1", "POINT must be one of"), ("4:after-meta:1", "only rank 0 writes bigtrain.json and latest")])
def test_kill_hook_refuses_a_bad_spec_in_one_line(tmp_path, spec, want):
    with pytest.raises(BigtrainError) as e:
        KillInSave(spec, tmp_path)
    assert str(e.value).startswith(f"BIGTRAIN_FAULT_KILL_IN_SAVE={spec}: {want}") and "\n" not in str(e.value)


def test_kill_hook_fires_once_per_spec(tmp_path):
    hook = KillInSave("6:ds-bytes=100:1", tmp_path)
    assert (hook.step, hook.point, hook.nbytes, hook.rank) == (6, "ds-bytes=100", 100, 1)
    assert hook.armed(6, 1) and not hook.armed(6, 0) and not hook.armed(4, 1)
    (tmp_path / FAULT_KILL_MARKER).write_text("6:ds-bytes=100:1")  # what die() leaves behind
    assert not hook.armed(6, 1)  # a restarted job does not die again
    assert KillInSave("8:before-meta:1", tmp_path).armed(8, 1)  # another spec in the same run does
