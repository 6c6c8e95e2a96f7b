"""A run stopped at step 10 and resumed to 20 logs the same losses as an uninterrupted 20-step run.

On CPU in fp32 the aim is bitwise: same optimizer state, LR schedule position and data position.
"""

import json

import pytest

from bigtrain.checkpoint.manager import META_FILE
from bigtrain.io import sha256_file
from tests.helpers import TINY, bigtrain, losses, metrics

COMMON = ["train.max_steps=20", "train.log_interval=1", "checkpoint.interval=10", "model.n_layers=2"]

CASES = {
    "single": (1, []),
    "pp2": (2, ["parallel.pp=2"]),
    "tp2-pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_resume_is_bitwise(tmp_path, name):
    nproc, layout = CASES[name]
    full, split = tmp_path / "full", tmp_path / "split"
    bigtrain("train", TINY, "--run-dir", str(full), *COMMON, *layout, nproc=nproc)
    bigtrain("train", TINY, "--run-dir", str(split), *COMMON, *layout, "train.stop_after=10", nproc=nproc)
    assert [r["step"] for r in metrics(split)] == list(range(1, 11))
    out = bigtrain("train", TINY, "--run-dir", str(split), *COMMON, *layout, nproc=nproc)
    assert "resumed from" in out.stdout and "step_00000010" in out.stdout
    assert losses(split) == losses(full)
    assert [r["step"] for r in metrics(split)] == list(range(1, 21))


def test_checkpoint_contents_and_resume_flag(tmp_path):
    run = tmp_path / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "checkpoint.interval=5", "checkpoint.keep=2",
             "train.stop_after=15")
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000010", "step_00000015"]  # keep=2 pruned step 5
    meta = json.loads((run / "checkpoints" / "step_00000015" / META_FILE).read_text())
    assert meta["step"] == 15
    assert meta["consumed_tokens"] == 15 * 8 * 64
    assert meta["loader"] == {"consumed_samples": 15 * 8}
    assert meta["config"]["model"]["n_layers"] == 2 and meta["layout"]["tp"] == 1
    # The checksums were taken as the files were written (checkpoint/torch_engine.py); read them back.
    ckpt = run / "checkpoints" / "step_00000015"
    on_disk = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != META_FILE)
    assert sorted(meta["files"]) == on_disk and any(f.endswith("model_states.pt") for f in on_disk)
    for rel, want in meta["files"].items():
        assert sha256_file(ckpt / rel) == want["sha256"] and (ckpt / rel).stat().st_size == want["bytes"], rel
    # --resume RUN takes the config from the checkpoint; overrides still apply.
    out = bigtrain("train", "--resume", str(run), "train.stop_after=0")
    assert "resumed from" in out.stdout
    assert metrics(run)[-1]["step"] == 20


def test_resume_refuses_other_layout(tmp_path):
    run = tmp_path / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "train.stop_after=10")
    proc = bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "parallel.tp=2", nproc=2, check=False)
    assert proc.returncode != 0
    assert ("saved with layout tp=1 pp=1 zero_stage=0, this run is tp=2 pp=1 zero_stage=0: convert it with "
            "bigtrain convert --tp 2 --pp 1 --dp 1 --zero-stage 1") in proc.stderr
    # One process ran ZeRO stage 0; two run stage 1, whose optimizer files are partitioned over DP and
    # absent here (DeepSpeed itself stops with a ZeRORuntimeException about the DP world size).
    proc = bigtrain("train", TINY, "--run-dir", str(run), *COMMON, nproc=2, check=False)
    assert proc.returncode != 0
    assert ("saved with layout tp=1 pp=1 zero_stage=0 dp=1, this run is tp=1 pp=1 zero_stage=1 dp=2: convert it with "
            "bigtrain convert --tp 1 --pp 1 --dp 2 --zero-stage 1") in proc.stderr
