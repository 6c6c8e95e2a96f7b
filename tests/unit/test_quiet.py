"""Known third-party warnings are hidden in bigtrain's processes, and shown with BIGTRAIN_VERBOSE=1 / --verbose
(on every rank)."""

import subprocess
import sys

from tests.helpers import REPO, env_for_tests

# What bigtrain's processes do first (bigtrain.cli.main, init_distributed), then the import that warns.
SCRIPT = "from bigtrain import quiet; quiet.install(); import megatron.core.optimizer"


def _stderr(verbose: bool) -> str:
    env = env_for_tests()
    env.pop("BIGTRAIN_VERBOSE", None)
    if verbose:
        env["BIGTRAIN_VERBOSE"] = "1"
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=REPO,
                          check=True).stderr


def test_known_warnings_hidden_unless_verbose():
    assert "Transformer Engine and Apex are not installed" in _stderr(verbose=True)
    assert "Transformer Engine and Apex are not installed" not in _stderr(verbose=False)


def test_verbose_flag_shows_them_on_every_rank(tmp_path):
    """`bigtrain --verbose train` under torchrun: each rank shows what one process shows (and the console without
    --verbose shows none of it: tests/e2e/test_main_job.py)."""
    from tests.helpers import TINY, bigtrain

    args = ["train", TINY, "train.max_steps=1", "model.n_layers=2", "checkpoint.interval=0"]
    one = bigtrain("--verbose", *args, "--run-dir", str(tmp_path / "one")).stderr
    two = bigtrain("--verbose", *args, "--run-dir", str(tmp_path / "two"), nproc=2).stderr
    per_process = one.count("Transformer Engine and Apex are not installed")
    assert per_process > 0 and two.count("Transformer Engine and Apex are not installed") == 2 * per_process, two
