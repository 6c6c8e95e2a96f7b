"""One training job on two "hosts": two network namespaces joined by a veth pair, each with its own
address, one torchrun per host (--nnodes 2 --node_rank 0/1, MASTER_ADDR = the first host's address).
The losses equal those of the same job on one host. Nothing in bigtrain may assume one machine: the
rendezvous, gloo's sockets and the checkpoint writes all cross the "network" here.

Needs root and `ip netns` (CAP_SYS_ADMIN, CAP_NET_ADMIN); skipped with the reason where the machine
does not allow it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.helpers import REPO, TINY, bigtrain, env_for_tests, losses, metrics

ARGS = ["train.max_steps=8", "train.log_interval=1", "checkpoint.interval=4", "model.n_layers=2"]
HOST_A, HOST_B = "10.213.0.1", "10.213.0.2"
SEED = int(os.environ.get("BIGTRAIN_TEST_SEED", "18"))


def master_port() -> int:
    """The namespaces are created for this test, so no other process can hold a port in them: any port below
    the kernel's ephemeral range (32768-60999, where gloo's own sockets land) is free. Seeded and printed, so
    a failure names the port it used and reruns with it."""
    port = random.Random(SEED).randrange(20000, 32768)
    print(f"BIGTRAIN_TEST_SEED={SEED}: master port {port}")
    return port


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"btprobe{uuid.uuid4().hex[:6]}"
    r = _sh("ip", "netns", "add", probe)
    if r.returncode != 0:
        return f"this machine does not allow network namespaces: {r.stderr.strip()}"
    _sh("ip", "netns", "del", probe)
    return None


@pytest.fixture
def two_hosts():
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns = (f"bta{tag}", f"btb{tag}")
    veth = (f"vta{tag}", f"vtb{tag}")
    try:
        for n in ns:
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True)
        subprocess.run(["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]], check=True,
                       capture_output=True)
        for n, v, addr in zip(ns, veth, (HOST_A, HOST_B)):
            for cmd in (["ip", "link", "set", v, "netns", n],
                        ["ip", "-n", n, "addr", "add", f"{addr}/24", "dev", v],
                        ["ip", "-n", n, "link", "set", v, "up"],
                        ["ip", "-n", n, "link", "set", "lo", "up"]):
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"cannot wire two network namespaces ({' '.join(cmd)}): {r.stderr.strip()}")
        ping = subprocess.run(["ip", "netns", "exec", ns[1], "ping", "-c", "1", "-W", "2", HOST_A],
                              capture_output=True, text=True)
        if shutil.which("ping") and ping.returncode != 0:
            pytest.skip(f"the two namespaces cannot reach each other: {ping.stdout[-300:]}")
        yield list(zip(ns, veth, (HOST_A, HOST_B)))
    finally:
        for n in ns:
            _sh("ip", "netns", "del", n)  # deletes the veth ends inside it too


def test_two_hosts_train_like_one(tmp_path, two_hosts):
    run = tmp_path / "two-hosts"
    procs = []
    port = master_port()
    for node_rank, (ns, veth, addr) in enumerate(two_hosts):
        env = env_for_tests()
        # gloo binds to the interface named here, i.e. this "host's" own address.
        env.update(GLOO_SOCKET_IFNAME=veth, OMP_NUM_THREADS="1")
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--node_rank", str(node_rank), "--nproc_per_node", "1", "--master_addr", HOST_A,
               "--master_port", str(port), "--local_addr", addr, "-m", "bigtrain", "train", TINY,
               "--run-dir", str(run), *ARGS]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env, cwd=REPO))
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    assert [r["step"] for r in metrics(run)] == list(range(1, 9))
    # The same job on one host (two processes) logs the same losses.
    bigtrain("train", TINY, "--run-dir", str(tmp_path / "one-host"), *ARGS, nproc=2)
    assert losses(run) == losses(tmp_path / "one-host")
