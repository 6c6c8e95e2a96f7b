"""torch.distributed from the environment of whichever launcher started us."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch

from bigtrain import quiet


def configure_accelerator() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported; returns 'cuda' or 'cpu'."""
    if torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
        return "cuda"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_hostlist_host(nodelist: str) -> str:
    """The first host of a SLURM host list (``gpu[001-004,007],cpu1`` → ``gpu001``), as ``scontrol show
    hostnames`` would print it; for containers without ``scontrol``."""
    first, depth = [], 0
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += (ch == "[") - (ch == "]")
        first.append(ch)
    # every bracket stands for its first value, zero-padding kept: [001-004,007] -> 001
    return re.sub(r"\[([^],-]*)[^]]*\]", r"\1", "".join(first))


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0] if out else first_hostlist_host(nodelist)
    except (OSError, subprocess.SubprocessError):
        return first_hostlist_host(nodelist)


def cuda_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a process: its LOCAL_RANK among the node's GPUs, or 0 when SLURM binds one GPU to
    each task (``--gpus-per-task=1``: every task sees only its own, as device 0)."""
    if visible == 1:
        return 0
    if not 0 <= local_rank < visible:
        from bigtrain.errors import BigtrainError

        raise BigtrainError(f"LOCAL_RANK={local_rank} but this process sees {visible} GPUs "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                            "start one process per GPU")
    return local_rank


def map_launcher_env() -> None:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from SLURM or set up a single process.

    torchrun, the deepspeed launcher and Ray Train set the torch variables themselves; ``srun`` sets
    only SLURM_* (as GPT-NeoX does, map them); a plain ``bigtrain train`` is a world of one.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")


def _restart_scoped_store():
    """Under torchrun with restarts, the agent's store outlives a failed attempt, and the restarted
    ranks would read the dead ranks' addresses from it; keys are scoped by attempt instead."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       int(os.environ["WORLD_SIZE"]), is_master=False,
                                       timeout=timedelta(minutes=30))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return torch.distributed.PrefixStore(f"/bigtrain/attempt_{attempt}", store)


def _cpu_ranges(cpus: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def placement() -> str:
    """Where this rank runs, as the launcher placed it: one line for checking a cluster's binding."""
    env = os.environ
    return (f"placement: rank {env.get('RANK')}/{env.get('WORLD_SIZE')} host {socket.gethostname()} "
            f"local_rank {env.get('LOCAL_RANK')} CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')} "
            f"cpus {_cpu_ranges(os.sched_getaffinity(0))} master {env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed() -> DistInfo:
    """Start the default process group (gloo on CPU, nccl on GPU) through DeepSpeed's comm layer."""
    kind = configure_accelerator()
    map_launcher_env()
    if os.environ.get("BIGTRAIN_PROBE") == "1":  # set by the cluster scripts' users to check binding
        print(placement(), flush=True)
    quiet.install()
    import deepspeed

    local_rank = int(os.environ["LOCAL_RANK"])
    if kind == "cuda":
        index = cuda_device_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    backend = "nccl" if kind == "cuda" else "gloo"
    store = _restart_scoped_store()
    if store is None and int(os.environ["WORLD_SIZE"]) == 1:
        # A world of one needs no rendezvous: an in-memory store avoids racing other jobs for a port.
        store = torch.distributed.HashStore()
    if store is not None and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                             world_size=int(os.environ["WORLD_SIZE"]))
    with quiet.quiet_stdout():
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        else:  # Ray Train (or the store above) already made the group; DeepSpeed's comm layer adopts it
            deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)
