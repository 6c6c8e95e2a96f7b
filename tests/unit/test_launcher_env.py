"""What ranks derive from a SLURM allocation without help from `scontrol`, and which GPU a rank takes."""

from __future__ import annotations

import os

import pytest

from bigtrain.errors import BigtrainError
from bigtrain.parallel import dist


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[001-004,007],cpu1", "gpu001"), ("node[5,7-9].cluster", "node5.cluster"),
    ("rack[1-2]-n[01-04]", "rack1-n01"), ("a1,b2", "a1"), ("gpu010", "gpu010"), ("n[2-3],m[4]", "n2")])
def test_first_host_of_a_slurm_host_list(nodelist, first):
    assert dist.first_hostlist_host(nodelist) == first


def test_srun_ranks_without_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol (as in many containers)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[003-004]")
    dist.map_launcher_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("9", "16", "1")
    assert os.environ["MASTER_ADDR"] == "gpu003" and os.environ["MASTER_PORT"] == str(29500 + 4242 % 1000)


def test_cuda_device_under_per_node_and_per_task_binding(monkeypatch):
    assert dist.cuda_device_index(5, 8) == 5  # --gpus-per-node=8: the node's GPUs, by LOCAL_RANK
    assert dist.cuda_device_index(5, 1) == 0  # --gpus-per-task=1: each task sees its own GPU as device 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(BigtrainError, match=r"LOCAL_RANK=3 but this process sees 2 GPUs \(CUDA_VISIBLE_DEVICES=0,1\)"):
        dist.cuda_device_index(3, 2)
