"""Which address a Ray node of ray.sbatch advertises (`bigtrain launch ray-node`), with stand-ins for what the
machine reports: its interfaces and what its host name resolves to. `hostname --ip-address`, which the script
used before, answers 127.0.1.1 on Debian-style /etc/hosts and may answer an IPv6 address first."""

from __future__ import annotations

import socket

import pytest

from bigtrain.errors import BigtrainError
from bigtrain.launch import ray_node

IFACES = {"lo": ["127.0.0.1"], "eth0": ["10.1.2.3"], "ib0": ["192.168.50.7"]}


@pytest.fixture
def machine(monkeypatch):
    """Set what this 'machine' has: interfaces (up, IPv4) and what its host name resolves to (AF_INET)."""
    def make(resolves: list[str] | None, ifaces=IFACES):
        monkeypatch.setattr(ray_node, "_local_ipv4", lambda: ifaces)
        monkeypatch.setattr(socket, "gethostname", lambda: "gpu001")

        def getaddrinfo(host, port, family=0, *a, **k):
            assert host == "gpu001" and family == socket.AF_INET  # never asks for IPv6
            if resolves is None:  # the name has only an IPv6 address (or none): no AF_INET answer
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in resolves]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return make


def test_host_name_on_127_0_1_1_falls_back_to_an_interface(machine):
    machine(["127.0.1.1"])
    assert ray_node.node_ip() == "10.1.2.3"


def test_host_name_with_only_an_ipv6_address_falls_back_to_an_interface(machine):
    machine(None)
    assert ray_node.node_ip() == "10.1.2.3"


def test_host_name_on_a_local_interface_wins(machine):
    machine(["192.168.50.7"])  # e.g. the cluster network is the InfiniBand one
    assert ray_node.node_ip() == "192.168.50.7"


def test_host_name_on_an_address_not_here_is_not_trusted(machine):
    machine(["10.9.9.9"])  # a stale /etc/hosts entry
    assert ray_node.node_ip() == "10.1.2.3"


def test_explicit_address_and_interface(machine):
    machine(["127.0.1.1"])
    assert ray_node.node_ip("10.0.0.5") == "10.0.0.5"
    assert ray_node.node_ip(interface="ib0") == "192.168.50.7"
    with pytest.raises(BigtrainError, match=r"--node-ip-address 'fe80::1' is not an IPv4 address"):
        ray_node.node_ip("fe80::1")
    with pytest.raises(BigtrainError, match=r"interface 'ib1' is not up or has no IPv4 address"):
        ray_node.node_ip(interface="ib1")


def test_only_loopback_is_a_one_line_error(machine):
    machine(["127.0.1.1"], ifaces={"lo": ["127.0.0.1"]})
    with pytest.raises(BigtrainError, match="pass --node-ip-address or --interface"):
        ray_node.node_ip()


def test_worker_port_blocks_differ_by_job():
    a = ray_node.worker_port_block(512, "4242")
    b = ray_node.worker_port_block(512, "4243")
    assert a != b and a[1] - a[0] == b[1] - b[0] == 511
    assert 10000 <= min(a[0], b[0]) and max(a[1], b[1]) <= 31999
