"""Non-finite steps are skipped (their data consumed, no update) and counted; N in a row stop the run with a
good checkpoint; a finite loss spike warns naming the batch's sample ids."""

import json
import math
import re

import numpy as np
import pytest
import torch

from tests.helpers import TINY, bigtrain, env_for_tests, metrics

COMMON = ["train.max_steps=8", "train.log_interval=1", "checkpoint.interval=0", "model.n_layers=2"]
GBS = 8  # tiny-cpu.yaml's global batch


def _env(steps: str, var: str = "BIGTRAIN_FAULT_NAN_STEPS"):
    env = env_for_tests()
    env[var] = steps
    return env


def _ckpt(run, step):
    return run / "checkpoints" / f"step_{step:08d}"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    run = tmp_path_factory.mktemp("clean") / "run"
    # The step-3 checkpoint holds the weights a skipped step 4 must leave in place.
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "checkpoint.interval=3", "checkpoint.keep=3")
    return run


# One process runs ZeRO stage 0 whatever is configured (ParallelConfig.zero_stage_at): stages 1 and 3 need DP=2.
LAYOUTS = {"zero0": (1, ["parallel.zero_stage=0"]), "zero1-dp2": (2, ["parallel.zero_stage=1"]),
           "zero3-dp2": (2, ["parallel.zero_stage=3"]), "pp2": (2, ["parallel.pp=2"])}


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    runs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        run = tmp_path_factory.mktemp(name) / "run"
        bigtrain("train", TINY, "--run-dir", str(run), *COMMON, *layout, nproc=nproc, env=_env("4"))
        runs[name] = run
    return runs


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_nan_step_is_skipped_and_counted(clean, injected, name):
    rows, ref_clean = metrics(injected[name]), metrics(clean)
    assert [r["skipped"] for r in rows] == [False, False, False, True, False, False, False, False]
    assert rows[3]["loss"] is None and rows[-1]["skipped_steps"] == 1
    # Before the fault: identical to the clean run. After: finite, and different (the update of step 4
    # and its data are gone) — yet the same under every ZeRO stage and pipeline layout.
    assert [r["loss"] for r in rows[:3]] == pytest.approx([r["loss"] for r in ref_clean[:3]], rel=1e-5)
    assert all(math.isfinite(r["loss"]) for r in rows[4:])
    assert rows[4]["loss"] != pytest.approx(ref_clean[4]["loss"], rel=1e-6)
    ref = metrics(injected["zero1-dp2"])
    assert [r["loss"] for r in rows[4:]] == pytest.approx([r["loss"] for r in ref[4:]], rel=1e-4)


def _loss_on_samples(ckpt, first, n):
    """The loss of ``ckpt``'s weights on global samples [first, first + n) of the run's loader, in this process:
    a micro-batch at a time, averaged, as the trainer does."""
    from bigtrain.data.build import build_loader
    from bigtrain.generate.inference import load_model_for_inference

    model, _, job = load_model_for_inference(ckpt)
    loader = build_loader(job, 0, 1)
    loader.load_state_dict({"consumed_samples": first})
    with torch.no_grad():
        parts = []
        for _ in range(n // job.train.micro_batch_size):
            b = loader.next_batch()
            parts.append(model(b.input_ids, b.labels).float())
    return float(torch.stack(parts).mean())


def test_skipped_steps_data_is_consumed(clean, injected):
    rows, ref_clean = metrics(injected["zero0"]), metrics(clean)
    # Step 5 starts from step 3's weights (step 4 changed nothing) and must train on step 5's samples, not on
    # step 4's again. The reference computation, in this process without DeepSpeed, first reproduces the clean
    # run's step 4, then gives step 5's loss on the right samples (both observed equal bit for bit; replaying
    # step 4's samples would give a loss 3.8e-3 relative away).
    step3 = _ckpt(clean, 3)
    assert _loss_on_samples(step3, 3 * GBS, GBS) == pytest.approx(ref_clean[3]["loss"], rel=1e-6)
    consumed = _loss_on_samples(step3, 4 * GBS, GBS)
    assert rows[4]["loss"] == pytest.approx(consumed, rel=1e-6)
    assert rows[4]["loss"] != pytest.approx(ref_clean[3]["loss"], rel=1e-4)  # what replaying step 4's data gives
    # The loader position a resume continues from.
    meta = json.loads((_ckpt(injected["zero0"], 8) / "bigtrain.json").read_text())
    assert meta["loader"] == {"consumed_samples": 8 * GBS} and meta["skipped_steps"] == 1


# A finite loss whose gradient is NaN: only the gradient norm shows it. With clipping off (grad_clip=0) the
# norm is still what decides; DeepSpeed's ZeRO-1 path and bigtrain's ZeRO-0 clip both report it.
NAN_GRAD = {"zero0": (1, ["parallel.zero_stage=0"], "zero0"),
            "zero0-noclip": (1, ["parallel.zero_stage=0", "train.grad_clip=0"], "zero0"),
            "zero1-dp2-noclip": (2, ["parallel.zero_stage=1", "train.grad_clip=0"], "zero1-dp2")}


@pytest.fixture(scope="module")
def nan_grad(tmp_path_factory):
    runs = {}
    for name, (nproc, layout, _) in NAN_GRAD.items():
        run = tmp_path_factory.mktemp(name) / "run"
        bigtrain("train", TINY, "--run-dir", str(run), *COMMON, *layout, "checkpoint.interval=1", "checkpoint.keep=8",
                 nproc=nproc, env=_env("4", "BIGTRAIN_FAULT_NAN_GRAD_STEPS"))
        runs[name] = run
    return runs


@pytest.mark.parametrize("name", list(NAN_GRAD))
def test_nan_gradient_with_finite_loss_is_skipped(clean, injected, nan_grad, name):
    from bigtrain.convert.weights_io import read_merged_weights

    run, rows = nan_grad[name], metrics(nan_grad[name])
    assert [r["skipped"] for r in rows] == [False, False, False, True, False, False, False, False]
    assert rows[3]["loss"] == pytest.approx(metrics(clean)[3]["loss"], rel=1e-6)
    assert rows[3]["grad_norm"] is None and rows[-1]["skipped_steps"] == 1  # non-finite, written as null
    w3, w4, w5 = (read_merged_weights(_ckpt(run, s))[0] for s in (3, 4, 5))
    assert all(torch.equal(w3[k], w4[k]) for k in w3)
    assert not all(torch.equal(w4[k], w5[k]) for k in w4)
    # Data consumed, moments untouched: from step 5 on, bit for bit the run whose loss was NaN at step 4.
    ref = metrics(injected[NAN_GRAD[name][2]])
    assert [r["loss"] for r in rows[4:]] == [r["loss"] for r in ref[4:]]


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


def test_loss_spike_warning_names_the_batchs_samples(tmp_path):
    from bigtrain.config.job import load_job_config
    from bigtrain.data.build import build_loader

    rng = np.random.default_rng(0)
    np.save(tmp_path / "tokens.npy", rng.integers(0, 256, size=20_000).astype(np.uint16))
    # A token file: its sample ids are shuffled window positions, not the step's sample indices.
    args = ["train.max_steps=12", "train.log_interval=1", "checkpoint.interval=0", "model.n_layers=2",
            f"data.path={tmp_path / 'tokens.npy'}"]
    out = bigtrain("train", TINY, "--run-dir", str(tmp_path / "run"), *args,
                   env=_env("12", "BIGTRAIN_FAULT_SPIKE_STEPS")).stdout
    rows = metrics(tmp_path / "run")
    assert not rows[11]["skipped"]
    loader = build_loader(load_job_config(TINY, args), 0, 1)
    ids = ", ".join(loader.sample_id(i) for i in range(11 * GBS, 12 * GBS))
    warnings = re.findall(r"^warning: loss spike.*$", out, re.M)
    assert warnings == [f"warning: loss spike at step 12: {rows[11]['loss']:.4f} > 3.0 × running mean "
                        f"{np.mean([r['loss'] for r in rows[:11]]):.4f}; samples: {ids}"], out[-3000:]
