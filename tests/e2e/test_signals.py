"""SIGTERM and SIGUSR1 to `bigtrain train`: a save at the step it was in, exit status 143, the
`.bigtrain-stopped` record, and a rerun that resumes and logs the losses of one uninterrupted run.

The trainer's test-only hold (BIGTRAIN_FAULT_HOLD_AT_STEP) parks the run after a known step until a stop is
requested, so the signal lands at that step whatever the machine's speed."""

import signal
import subprocess
import sys
import time

import pytest

from bigtrain.train.cli import EXIT_PREEMPTED
from bigtrain.train.trainer import HELD_FILE, HOLD_ENV, STOPPED_FILE
from tests.helpers import REPO, TINY, bigtrain, env_for_tests, losses, metrics

STEPS = 6
ARGS = [f"train.max_steps={STEPS}", "train.log_interval=1", "checkpoint.interval=0", "model.n_layers=2"]
# Two runs stopped at different steps: each one's resumed steps are the other's uninterrupted ones, so equal
# losses over all STEPS stand in for a third, uninterrupted, reference run.
CASES = {"SIGUSR1": (signal.SIGUSR1, 2), "SIGTERM": (signal.SIGTERM, 4)}


def _stopped_run(run, sig, step):
    env = env_for_tests()
    env[HOLD_ENV] = str(step)
    proc = subprocess.Popen([sys.executable, "-m", "bigtrain", "train", TINY, "--run-dir", str(run), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not (run / HELD_FILE).exists():
            assert proc.poll() is None, f"exited {proc.returncode} before holding:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the run never reached its hold"
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    done = {}
    for name, (sig, step) in CASES.items():
        run = tmp_path_factory.mktemp(name) / "run"
        rc, out, err = _stopped_run(run, sig, step)
        stopped = (run / STOPPED_FILE).read_text() if (run / STOPPED_FILE).exists() else None
        before = losses(run)
        rerun = bigtrain("train", TINY, "--run-dir", str(run), *ARGS)
        done[name] = dict(run=run, rc=rc, out=out, err=err, stopped=stopped, before=before, rerun=rerun.stdout)
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_signal_saves_at_the_step_exits_143_and_resumes(runs, name):
    sig, step = CASES[name]
    r = runs[name]
    assert r["rc"] == EXIT_PREEMPTED == 143, r["err"][-3000:]
    assert f"received signal {int(sig)}: saving at step {step} and stopping" in r["out"]
    assert f"saved checkpoint {r['run'] / 'checkpoints' / f'step_{step:08d}'}" in r["out"]
    assert r["stopped"] == f"job= attempt=0 step={step} signal={int(sig)}\n"
    assert len(r["before"]) == step
    assert f"resumed from {r['run'] / 'checkpoints' / f'step_{step:08d}'} at step {step}" in r["rerun"]
    # A finished rerun leaves no stop record: a batch script must not requeue it.
    assert not (r["run"] / STOPPED_FILE).exists()
    assert [row["step"] for row in metrics(r["run"])] == list(range(1, STEPS + 1))
    # Bitwise on CPU: the stopped-and-resumed run equals the run stopped at another step.
    other = runs[next(n for n in CASES if n != name)]["run"]
    assert losses(r["run"]) == losses(other)
