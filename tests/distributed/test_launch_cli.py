"""`bigtrain launch ray-train` checks its arguments before starting Ray, with one-line errors."""

from tests.helpers import TINY, bigtrain


def test_ray_train_rejects_bad_worker_counts(tmp_path):
    proc = bigtrain("launch", "ray-train", TINY, "--run-dir", str(tmp_path / "r"), "--num-workers", "3",
                    "parallel.tp=2", check=False)
    assert proc.returncode == 2
    assert "world size 3 is not a multiple of parallel.tp × parallel.pp = 2 × 1 = 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bigtrain("launch", "ray-train", TINY, "--run-dir", str(tmp_path / "r"), "--num-workers", "0",
                    check=False)
    assert proc.returncode == 2 and "--num-workers must be at least 1, got 0" in proc.stderr


def test_launch_help_lists_ray_train():
    out = bigtrain("launch", "--help").stdout
    assert "ray-train" in out
    assert "--max-failures" in bigtrain("launch", "ray-train", "--help").stdout
