"""Non-finite steps are skipped and counted; N in a row stop the run with a good checkpoint."""

import json
import math

import pytest

from tests.helpers import TINY, bigtrain, env_for_tests, metrics

COMMON = ["train.max_steps=8", "train.log_interval=1", "checkpoint.interval=0", "model.n_layers=2"]


def _env(steps: str):
    env = env_for_tests()
    env["BIGTRAIN_FAULT_NAN_STEPS"] = steps
    return env


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    run = tmp_path_factory.mktemp("clean") / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON)
    return metrics(run)


# One process runs ZeRO stage 0 whatever is configured (ParallelConfig.zero_stage_at): stages 1 and 3 need DP=2.
LAYOUTS = {"zero0": (1, ["parallel.zero_stage=0"]), "zero1-dp2": (2, ["parallel.zero_stage=1"]),
           "zero3-dp2": (2, ["parallel.zero_stage=3"]), "pp2": (2, ["parallel.pp=2"])}


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    runs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        run = tmp_path_factory.mktemp(name) / "run"
        bigtrain("train", TINY, "--run-dir", str(run), *COMMON, *layout, nproc=nproc, env=_env("4"))
        runs[name] = metrics(run)
    return runs


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_nan_step_is_skipped_and_counted(clean, injected, name):
    rows = injected[name]
    assert [r["skipped"] for r in rows] == [False, False, False, True, False, False, False, False]
    assert rows[3]["loss"] is None and rows[-1]["skipped_steps"] == 1
    # Before the fault: identical to the clean run. After: finite, and different (the update of step 4
    # and its data are gone) — yet the same under every ZeRO stage and pipeline layout.
    assert [r["loss"] for r in rows[:3]] == pytest.approx([r["loss"] for r in clean[:3]], rel=1e-5)
    assert all(math.isfinite(r["loss"]) for r in rows[4:])
    assert rows[4]["loss"] != pytest.approx(clean[4]["loss"], rel=1e-6)
    ref = injected["zero1-dp2"]
    assert [r["loss"] for r in rows[4:]] == pytest.approx([r["loss"] for r in ref[4:]], rel=1e-4)


def test_consecutive_nans_stop_with_a_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "train.max_nonfinite_steps=3",
                    check=False, env=_env("3,4,5"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "bigtrain: error: stopped after 3 consecutive steps with a non-finite loss or gradient norm "
        "(steps 3-5); the checkpoint at step 5 holds the last good weights")
    meta = json.loads((run / "checkpoints" / "step_00000005" / "bigtrain.json").read_text())
    assert meta["skipped_steps"] == 3
    # Resuming without the fault continues with finite losses from that checkpoint.
    out = bigtrain("train", TINY, "--run-dir", str(run), *COMMON)
    assert "step_00000005 at step 5" in out.stdout
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in rows[5:])
