"""Known third-party warnings are hidden in bigtrain's processes, and shown with BIGTRAIN_VERBOSE=1 / --verbose."""

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
