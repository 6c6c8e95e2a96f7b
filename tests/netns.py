"""Test "machines" on one box: network namespaces joined by a bridge, each with its own address and host name.

A ``Hosts`` context makes N hosts ``<prefix>1 .. <prefix>N`` on a private /24. Each host is a network
namespace with one veth into a "switch" namespace holding a Linux bridge (so no address is added to the
machine's own namespace, and nothing outside the test hosts is reachable from them). ``ip netns exec``
bind-mounts ``/etc/netns/NS/hosts`` over ``/etc/hosts``, which gives every host the others' names; a command
run through ``Host.cmd`` also gets its own UTS namespace with the host's name, so ``hostname`` and
``socket.gethostname()`` answer as on a real machine. The filesystem (and unix sockets on it, munge's
included) is shared, as on a cluster with a shared filesystem.

Needs root and ``ip netns``; ``unavailable()`` says why not (for ``pytest.skip``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def unavailable() -> str | None:
    """Why network-namespace hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"btprobe{uuid.uuid4().hex[:6]}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"this machine does not allow network namespaces: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str     # host name (UTS) and the name the other hosts resolve
    ns: str       # network namespace
    ip: str
    ifname: str   # its interface (for GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)

    def cmd(self, *argv: str) -> list[str]:
        """argv run on this host: its network namespace, its /etc/hosts, its host name."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *argv]


class Hosts:
    """``with Hosts(2) as hosts:`` → [Host(...), Host(...)]; everything is removed on exit."""

    def __init__(self, n: int, prefix: str = "node", subnet: str = "10.213.7"):
        self.n, self.prefix, self.subnet = n, prefix, subnet
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"btsw{self.tag}"
        self.hosts: list[Host] = []

    def __enter__(self) -> list[Host]:
        try:
            self._make()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.hosts

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("-n", self.switch, "link", "set", "lo", "up")
        for i in range(1, self.n + 1):
            h = Host(f"{self.prefix}{i}", f"bt{self.tag}n{i}", f"{self.subnet}.{i}", f"eth{i}")
            self.hosts.append(h)
            _ip("netns", "add", h.ns)
            # Made inside the host's namespace, so the name cannot clash with the machine's interfaces.
            _ip("-n", h.ns, "link", "add", h.ifname, "type", "veth", "peer", "name", f"p{i}", "netns", self.switch)
            _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", h.ifname)
            _ip("-n", h.ns, "link", "set", h.ifname, "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")
        names = "".join(f"{h.ip}\t{h.name}\n" for h in self.hosts)
        for h in self.hosts:
            etc = Path("/etc/netns") / h.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{names}")
        # The bridge learns addresses within a second or two; wait until every host reaches the first.
        for h in self.hosts[1:]:
            for _ in range(20):
                if subprocess.run(["ip", "netns", "exec", h.ns, "ping", "-c", "1", "-W", "1", self.hosts[0].ip],
                                  capture_output=True).returncode == 0 or shutil.which("ping") is None:
                    break
            else:
                raise RuntimeError(f"{h.name} cannot reach {self.hosts[0].name} through the bridge")

    def __exit__(self, *exc) -> None:
        for h in self.hosts:
            shutil.rmtree(Path("/etc/netns") / h.ns, ignore_errors=True)
            _ip("netns", "del", h.ns, check=False)  # takes its veth end, and so the pair, with it
        _ip("netns", "del", self.switch, check=False)
