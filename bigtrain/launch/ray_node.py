"""One Ray node of a per-job Ray cluster (``bigtrain launch ray-node`` / ``bigtrain launch ray-wait``).

Several jobs may share a machine, so nothing here uses Ray's fixed default ports or the user's
``~/.ray/auth_token``:

* **Ports**: every port Ray listens on is picked free on this node — GCS, dashboard (head), Ray client
  server, dashboard agent HTTP and gRPC, metrics export, runtime-env agent, node manager, object
  manager — and the worker processes get their own block of ``--worker-ports`` ports (default 512) out of
  10000–31999, below Linux's ephemeral range, where the ports picked with ``bind(0)`` live. The block is
  chosen by the job id (``--job-id``, default ``$SLURM_JOB_ID``) and checked free, so two jobs on one node
  get different blocks.
* **Address**: the node's IPv4 address (never 127.x, never IPv6): ``--node-ip-address`` or ``--interface``
  if given; on a worker, the source address of the route to the head; on the head, the address its host
  name resolves to if a local interface holds it, else the first global IPv4 address of an interface that
  is up.
* **Token**: the per-job token in ``RAY_AUTH_TOKEN`` (Ray reads it before ``RAY_AUTH_TOKEN_PATH`` and
  ``~/.ray/auth_token``), or in the file ``RAY_AUTH_TOKEN_PATH`` (mode 0600 enforced here), is required;
  ``RAY_AUTH_MODE=token`` is set.
* **Temp dir**: ``--temp-dir`` (default ``/tmp/bt-ray-<job>-<host>``: node-local, short, since Ray's unix
  sockets live below it).

The head writes its address and ports to ``--info-file`` (JSON, written atomically) before it ``exec``\\ s
``ray start --head --block``; a worker waits for that file (up to ``RAY_JOIN_TIMEOUT``) and then
``exec``\\ s ``ray start --address HEAD --block``. ``ray-wait`` waits until the cluster counts ``--nodes``
live nodes and prints the GCS address, or fails with one line within ``RAY_JOIN_TIMEOUT`` seconds
(default 300).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

from bigtrain.errors import BigtrainError

JOIN_TIMEOUT_ENV = "RAY_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT = 300.0
WORKER_PORT_LO, WORKER_PORT_HI = 10000, 31999  # below the ephemeral range (32768-60999) bind(0) draws from

PORT_FLAGS = {  # key in the info file → `ray start` flag
    "node_manager": "--node-manager-port",
    "object_manager": "--object-manager-port",
    "client_server": "--ray-client-server-port",
    "dashboard_agent": "--dashboard-agent-listen-port",
    "dashboard_agent_grpc": "--dashboard-agent-grpc-port",
    "metrics_export": "--metrics-export-port",
    "runtime_env_agent": "--runtime-env-agent-port",
}
HEAD_PORT_FLAGS = {"gcs": "--port", "dashboard": "--dashboard-port"}


def join_timeout() -> float:
    raw = os.environ.get(JOIN_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_JOIN_TIMEOUT
    except ValueError:
        raise BigtrainError(f"{JOIN_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


# ------------------------------------------------------------------------------------------- address
def _usable(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a.version == 4 and not (a.is_loopback or a.is_link_local or a.is_unspecified or a.is_multicast)


def _local_ipv4() -> dict[str, list[str]]:
    """Interface → IPv4 addresses, interfaces that are up only."""
    import psutil

    stats = psutil.net_if_stats()
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        ips = [a.address for a in addrs if a.family == socket.AF_INET]
        if ips:
            out[name] = ips
    return out


def node_ip(explicit: str | None = None, interface: str | None = None, head: str | None = None) -> str:
    if explicit:
        try:
            if ipaddress.ip_address(explicit).version != 4:
                raise ValueError
        except ValueError:
            raise BigtrainError(f"--node-ip-address {explicit!r} is not an IPv4 address") from None
        return explicit
    local = _local_ipv4()
    if interface:
        ips = [ip for ip in local.get(interface, []) if _usable(ip)]
        if not ips:
            raise BigtrainError(f"interface {interface!r} is not up or has no IPv4 address "
                                f"(have: {', '.join(sorted(local)) or 'none'})")
        return ips[0]
    mine = {ip for ips in local.values() for ip in ips if _usable(ip)}
    if head:  # the source address of the route to the head (a UDP connect sends nothing)
        host = head.rsplit(":", 1)[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((socket.gethostbyname(host), 9))
                src = s.getsockname()[0]
            except OSError:
                src = ""
        if src and _usable(src):
            return src  # (a head on this very machine gives 127.x: fall through to this node's own address)
    try:
        named = [ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        named = []
    for ip in named:
        if ip in mine:
            return ip
    for name in local:  # interface order as the kernel lists them
        for ip in local[name]:
            if _usable(ip):
                return ip
    raise BigtrainError("no IPv4 address outside 127.0.0.0/8 on any interface that is up: "
                        "pass --node-ip-address or --interface")


# --------------------------------------------------------------------------------------------- ports
def free_ports(n: int) -> list[int]:
    """n distinct ports free on every interface of this node (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("0.0.0.0", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def worker_port_block(count: int, job_id: str) -> tuple[int, int]:
    """A block of `count` free ports in 10000-31999; the job id picks the first block tried."""
    blocks = (WORKER_PORT_HI - WORKER_PORT_LO + 1) // count
    if count < 16 or blocks < 1:
        raise BigtrainError(f"--worker-ports must be between 16 and {WORKER_PORT_HI - WORKER_PORT_LO + 1}")
    try:
        first = int(job_id) % blocks
    except ValueError:
        first = random.randrange(blocks)
    for i in range(blocks):
        lo = WORKER_PORT_LO + ((first + i) % blocks) * count
        if all(_port_free(p) for p in range(lo, lo + count)):
            return lo, lo + count - 1
    raise BigtrainError(f"no block of {count} free worker ports in {WORKER_PORT_LO}-{WORKER_PORT_HI}")


# --------------------------------------------------------------------------------------------- token
def check_token() -> None:
    """A per-job token must be given; Ray would otherwise fall back to (or create) ~/.ray/auth_token."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not path:
        raise BigtrainError("set the job's Ray token in RAY_AUTH_TOKEN (or a 0600 file in RAY_AUTH_TOKEN_PATH); "
                            "e.g. RAY_AUTH_TOKEN=$(openssl rand -hex 32)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise BigtrainError(f"RAY_AUTH_TOKEN_PATH={path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BigtrainError(f"RAY_AUTH_TOKEN_PATH={path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                            f"chmod 600 it")


# ---------------------------------------------------------------------------------------------- node
def _default_temp_dir(job_id: str) -> str:
    return f"/tmp/bt-ray-{job_id or os.getpid()}-{socket.gethostname()[:24]}"


def _ray_cli() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_info(path: Path, deadline: float) -> dict:
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise BigtrainError(f"the Ray head did not write {path} within {JOIN_TIMEOUT_ENV}="
                                    f"{join_timeout():g} s") from None
            time.sleep(0.5)


def node_argv(*, head: bool, info_file: Path, num_cpus: int | None, num_gpus: int | None,
              node_ip_address: str | None, interface: str | None, temp_dir: str | None, job_id: str,
              worker_ports: int, dashboard_host: str = "127.0.0.1", extra: list[str] = ()) -> list[str]:
    """The `ray start ... --block` command line for this node (the head also writes info_file)."""
    check_token()
    if head:
        info = None
        ip = node_ip(node_ip_address, interface)
    else:
        info = _read_info(info_file, time.monotonic() + join_timeout())
        ip = node_ip(node_ip_address, interface, head=info["address"])
    keys = (list(HEAD_PORT_FLAGS) if head else []) + list(PORT_FLAGS)
    ports = dict(zip(keys, free_ports(len(keys))))
    lo, hi = worker_port_block(worker_ports, job_id)
    tmp = temp_dir or _default_temp_dir(job_id)
    argv = [_ray_cli(), "start", "--block", "--disable-usage-stats", f"--node-ip-address={ip}",
            f"--temp-dir={tmp}", f"--min-worker-port={lo}", f"--max-worker-port={hi}"]
    argv += [f"{flag}={ports[k]}" for k, flag in {**HEAD_PORT_FLAGS, **PORT_FLAGS}.items() if k in ports]
    if head:
        argv += ["--head", f"--dashboard-host={dashboard_host}"]
    else:
        argv += [f"--address={info['address']}"]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        argv.append(f"--num-gpus={num_gpus}")
    argv += list(extra)
    if head:
        _write_json(info_file, {
            "address": f"{ip}:{ports['gcs']}", "node_ip": ip, "host": socket.gethostname(),
            "dashboard": f"http://127.0.0.1:{ports['dashboard']}" if dashboard_host.startswith("127.") else
                         f"http://{ip}:{ports['dashboard']}",
            "ports": {**ports, "worker_min": lo, "worker_max": hi}, "temp_dir": tmp, "job_id": job_id})
    return argv


def start_node(**kw) -> None:
    argv = node_argv(**kw)
    print(f"ray-node: {' '.join(a for a in argv[1:])}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(argv[0], argv)


# ---------------------------------------------------------------------------------------------- wait
def _alive_nodes(address: str) -> list[str] | None:
    """Node ids of the live nodes, or None while the GCS does not answer."""
    from ray._raylet import GcsClient

    try:
        client = GcsClient(address=address)
        infos = client.get_all_node_info(timeout=5)
    except Exception:
        return None
    from ray.core.generated import gcs_pb2

    alive = gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")
    return [nid.hex() for nid, info in infos.items() if info.state == alive]


def wait_for_nodes(info_file: Path, nodes: int, *, timeout: float | None = None,
                   watch_pids: list[int] = ()) -> dict:
    """Block until the cluster counts `nodes` live nodes; one-line BigtrainError after `timeout` s."""
    check_token()
    timeout = join_timeout() if timeout is None else timeout
    t0 = time.monotonic()
    deadline = t0 + timeout
    info = _read_info(info_file, deadline)
    seen: list[str] | None = None
    while True:
        for pid in watch_pids:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll it
                done, status = (0, 0) if _pid_alive(pid) else (pid, 0)
            if done:
                raise BigtrainError(f"a Ray node process (pid {pid}) exited before the cluster was complete "
                                    f"({len(seen or [])} of {nodes} nodes joined {info['address']})")
        seen = _alive_nodes(info["address"])
        if seen is not None and len(seen) >= nodes:
            info["nodes"] = seen
            return info
        if time.monotonic() > deadline:
            have = "the head did not answer" if seen is None else f"only {len(seen)} of {nodes} Ray nodes joined"
            raise BigtrainError(f"{have} at {info['address']} within {JOIN_TIMEOUT_ENV}={timeout:g} s")
        time.sleep(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
