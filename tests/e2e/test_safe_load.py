"""Checkpoints are unpickled with torch.load(weights_only=True): a crafted file is refused, not run."""

import json
import pickle

from bigtrain.checkpoint.manager import checksum_files
from tests.helpers import TINY, bigtrain

COMMON = ["train.max_steps=4", "checkpoint.interval=2", "model.n_layers=2"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused(tmp_path):
    run = tmp_path / "run"
    bigtrain("train", TINY, "--run-dir", str(run), *COMMON, "train.stop_after=2")
    ckpt = run / "checkpoints" / "step_00000002"
    marker = tmp_path / "pwned"
    with open(ckpt / "mp_rank_00_model_states.pt", "wb") as f:
        pickle.dump({"module": _Exploit(str(marker))}, f)
    # The attacker rewrites the checksums too, so only the restricted unpickler stands in the way.
    meta = json.loads((ckpt / "bigtrain.json").read_text())
    meta["files"] = checksum_files(ckpt)
    (ckpt / "bigtrain.json").write_text(json.dumps(meta))
    proc = bigtrain("train", TINY, "--run-dir", str(run), *COMMON, check=False)
    assert proc.returncode == 2
    assert not marker.exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bigtrain: error: {ckpt}: refused to load a file that is not plain tensors")
    assert "Traceback" not in proc.stderr
