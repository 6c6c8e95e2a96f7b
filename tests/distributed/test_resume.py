"""A run stopped at step 10 and resumed to 20 logs the same losses as an uninterrupted 20-step run.

On CPU in fp32 the aim is bitwise: same optimizer state, LR schedule position and data position.
"""

import json
import re
import subprocess
import sys

import pytest

from bigtrain.checkpoint.manager import META_FILE
from bigtrain.io import sha256_file
from bigtrain.parallel.layouts import CPU_LAYOUTS
from tests.helpers import REF_ARGS, REPO, TINY, bigtrain, env_for_tests, losses, metrics

COMMON = REF_ARGS  # the shared reference runs' job: 20 steps, a checkpoint at 10


@pytest.mark.parametrize("name", ["single", "pp2", "tp2-pp2", "dp2-zero1", "dp2-zero3"])
def test_resume_is_bitwise(tmp_path, ref_run, name):
    nproc, layout = CPU_LAYOUTS[name]
    full, split = ref_run(name), tmp_path / "split"  # the uninterrupted run is the shared reference
    bigtrain("train", TINY, "--run-dir", str(split), *COMMON, *layout, "train.stop_after=10", nproc=nproc)
    assert [r["step"] for r in metrics(split)] == list(range(1, 11))
    out = bigtrain("train", TINY, "--run-dir", str(split), *COMMON, *layout, nproc=nproc)
    # the save's duration, recorded in bigtrain.json, is printed on resume (to size a preemption warning)
    took = json.loads((split / "checkpoints" / "step_00000010" / META_FILE).read_text())["save_seconds"]
    assert 0 < took < 60
    assert f"resumed from {split / 'checkpoints' / 'step_00000010'} at step 10; its save took {took:.1f} s" \
        in out.stdout, out.stdout[-2000:]
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


def _files(run) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def _refused(logs, args: list[str], message: str, run) -> None:
    """Two ranks under torchrun, each rank's output in its own file (two ranks printing to one stream can
    interleave their lines): every rank that got as far as the check wrote exactly the one-line message and
    nothing else, the first to fail exited 2, and nothing was trained or written."""
    before = _files(run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--log-dir", str(logs),
           "--redirects", "3", "-m", "bigtrain", "train", TINY, "--run-dir", str(run), *COMMON, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env_for_tests(), cwd=REPO)
    assert proc.returncode == 1, proc.stderr[-4000:]  # torchrun's status when a worker fails
    # The first rank to fail (the other one torchrun stops itself) exited 2, bigtrain's status for a refusal.
    root_cause = proc.stderr[proc.stderr.index("Root Cause"):]
    assert re.search(r"exitcode\s*:\s*2\s", root_cause), root_cause
    errs = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(errs) == ["0", "1"], errs
    # A rank that torchrun stopped may have been cut off before printing, or between the line and its
    # newline (print writes them apart).
    assert all(e in (f"bigtrain: error: {message}\n", f"bigtrain: error: {message}", "") for e in errs.values()), errs
    assert any(errs.values()), errs
    outs = "".join(p.read_text() for p in logs.rglob("stdout.log"))
    assert "step " not in outs and "saved checkpoint" not in outs, outs
    assert _files(run) == before


def test_resume_refuses_other_layout(tmp_path):
    run = tmp_path / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "train.stop_after=10")
    ckpt = run / "checkpoints" / "step_00000010"
    _refused(tmp_path / "logs-tp2", ["parallel.tp=2"], f"{ckpt}: saved with layout tp=1 pp=1 zero_stage=0, this run is "
             "tp=2 pp=1 zero_stage=0: convert it with bigtrain convert --tp 2 --pp 1 --dp 1 --zero-stage 1", run)
    # One process ran ZeRO stage 0; two run stage 1, whose optimizer files are partitioned over DP and
    # absent here (DeepSpeed itself stops with a ZeRORuntimeException about the DP world size).
    _refused(tmp_path / "logs-dp2", [], f"{ckpt}: saved with layout tp=1 pp=1 zero_stage=0 dp=1, this run is tp=1 pp=1 "
             "zero_stage=1 dp=2: convert it with bigtrain convert --tp 1 --pp 1 --dp 2 --zero-stage 1", run)
