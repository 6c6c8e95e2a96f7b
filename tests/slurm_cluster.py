"""A real two-node SLURM cluster for tests: two network-namespace hosts (tests/netns.py), slurmctld on the first
(which is also a compute node), one slurmd per host, one munged whose unix socket every host sees. The daemons and
their configuration come from cluster/slurm/local-cluster.sh (BIGTRAIN_SLURM_NODES mode): each node declares
CPUs=2 (this machine's cores), two dummy GPUs (character devices in the state directory, gres.conf), and
task/affinity gives tasks real CPU masks.

    with start_cluster("/tmp/btsc-x") as cluster:
        job = cluster.sbatch(script, "arg", workdir=work, sbatch_args=["--ntasks-per-node=2"])
        fields = cluster.wait(job, {"COMPLETED"})

Every client command (sbatch, scontrol, ...) runs on node1, where slurmctld listens. Jobs see the client
environment ``cluster.env``: SLURM_CONF, PYTHONPATH = the repo, DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1,
BIGTRAIN = this interpreter's ``-m bigtrain``, the venv's bin first on PATH, no inherited SLURM_* variables.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tests import netns
from tests.helpers import REPO, env_for_tests

SCRIPT = REPO / "cluster" / "slurm" / "local-cluster.sh"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"})
_TOOLS = ("slurmctld", "slurmd", "sbatch", "munged")


def slurm_unavailable(install: bool = True) -> str | None:
    """Why the two-node cluster cannot run here (for pytest.skip), or None. Installs SLURM (apt) if missing."""
    why = netns.unavailable()
    if why:
        return why
    if all(shutil.which(t) for t in _TOOLS):
        return None
    if not install or shutil.which("apt-get") is None:
        return "SLURM is not installed (slurmctld slurmd slurm-client munge) and there is no apt-get to install it"
    scratch = "/tmp/btsc-install"
    r = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "BIGTRAIN_SLURM_DIR": scratch})
    if r.returncode != 0 or not all(shutil.which(t) for t in _TOOLS):
        return f"installing SLURM failed: {r.stderr.strip()[-500:]}"
    shutil.rmtree(scratch, ignore_errors=True)
    return None


def client_env(conf: str | Path) -> dict[str, str]:
    env = env_for_tests()
    for k in list(env):
        if k.startswith("SLURM_"):
            env.pop(k)
    env["SLURM_CONF"] = str(conf)
    env["DS_ACCELERATOR"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    env["BIGTRAIN"] = f"{sys.executable} -m bigtrain"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _tail(path: str | Path, lines: int) -> str:
    p = Path(path)
    if not p.is_file():
        return f"(no {p})"
    return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])


class SlurmCluster:
    def __init__(self, hosts: list[netns.Host], state_dir: str | Path):
        self.hosts = hosts
        self.dir = Path(state_dir)
        self.conf = self.dir / "slurm.conf"
        self.nodes = ",".join(f"{h.name}={h.ip}" for h in hosts)
        self.env = client_env(self.conf)
        # What local-cluster.sh needs; no SLURM_* of ours leaks into the daemons (and so into jobs) either.
        self.daemon_env = {**self.env, "BIGTRAIN_SLURM_DIR": str(self.dir), "BIGTRAIN_SLURM_NODES": self.nodes}

    # ---- client commands -------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """argv on node1 (where slurmctld listens) with the client environment (plus ``env``)."""
        proc = subprocess.run(self.hosts[0].cmd(*argv), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n"
                                 f"{proc.stderr[-2000:]}")
        return proc

    def sbatch(self, script: str | Path, *args: str, workdir: str | Path, nodes: int = 2,
               extra_env: Mapping[str, str] | None = None, sbatch_args: Iterable[str] = ()) -> str:
        """Submit ``script args`` from ``workdir`` (also its --chdir), log workdir/job-<id>.out; the job id."""
        workdir = Path(workdir)
        argv = ["sbatch", "--parsable", f"--nodes={nodes}", "--chdir", str(workdir),
                "--output", str(workdir / "job-%j.out"), *sbatch_args, str(script), *args]
        proc = subprocess.run(self.hosts[0].cmd(*argv), capture_output=True, text=True, timeout=60, cwd=workdir,
                              env={**self.env, **(extra_env or {})})
        if proc.returncode != 0:
            raise AssertionError(f"sbatch failed ({proc.returncode}): {proc.stderr}\n{self.daemon_logs(20)}")
        return proc.stdout.strip().split(";")[0]

    def fields(self, job: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, NodeList, StdOut, Reason, ...)."""
        out = self.run("scontrol", "-o", "show", "job", str(job), check=False, timeout=30).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def job_log(self, job: str, lines: int | None = None) -> str:
        """The job's output file (its StdOut), whole or its last ``lines``."""
        path = self.fields(job).get("StdOut", "")
        if not path or not Path(path).is_file():
            return f"(no output file for job {job}: {path!r})"
        text = Path(path).read_text(errors="replace")
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def wait(self, job: str, states: Iterable[str], timeout: float = 300, restarts: int | None = None
             ) -> dict[str, str]:
        """Poll until the job is in one of ``states`` (and, given ``restarts``, has been requeued at least that
        often); its fields then. Raises with its log and the daemons' logs on timeout."""
        states = set(states)
        deadline = time.monotonic() + timeout
        while True:
            f = self.fields(job)
            if f.get("JobState") in states and (restarts is None or int(f.get("Restarts", "0")) >= restarts):
                return f
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} not in {sorted(states)} (restarts >= {restarts}) after {timeout}s: {f}\n--- job log\n"
                                     f"{self.job_log(job, 40)}\n{self.daemon_logs()}")
            time.sleep(0.25)

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=30).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def wait_idle(self, timeout: float = 120) -> None:
        """Until every node is idle (nothing running or completing); raise with the daemons' logs otherwise."""
        want = {h.name for h in self.hosts}
        deadline = time.monotonic() + timeout
        while True:
            states = self.node_states()
            if set(states) == want and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not idle after {timeout}s: {states}\n{self.daemon_logs()}")
            time.sleep(0.2)

    def start_now(self, job: str, timeout: float = 120) -> dict[str, str]:
        """Let a requeued (PENDING, held ~2 min by SLURM's BeginTime) job start now: once every node is idle and
        the clock has passed the next whole second, ``scontrol update StartTime=now``, repeated (with ``scontrol
        release`` after a refused launch left it held) until the job leaves PENDING. Returns its fields then.

        (slurmd refuses to launch a job whose credential is not newer than the job's last kill, in whole
        seconds: "Job N already killed, do not launch batch job"; hence the next second.)"""
        self.wait_idle(timeout)
        idle_at = time.time()
        while int(time.time()) <= int(idle_at):
            time.sleep(0.05)
        deadline = time.monotonic() + timeout
        while True:
            f = self.fields(job)
            if f.get("JobState") != "PENDING":
                return f
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} still PENDING after {timeout}s: {f}\n{self.daemon_logs()}")
            if "held" in f.get("Reason", "").lower() or f.get("Priority") == "0":
                self.run("scontrol", "release", str(job), check=False)
            self.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
            t = time.monotonic() + 3
            while time.monotonic() < t and self.fields(job).get("JobState") == "PENDING":
                time.sleep(0.2)

    def daemon_logs(self, lines: int = 40) -> str:
        """The last ``lines`` of slurmctld's and every slurmd's log."""
        parts = [f"--- slurmctld.log\n{_tail(self.dir / 'log' / 'slurmctld.log', lines)}"]
        for h in self.hosts:
            parts.append(f"--- slurmd-{h.name}.log\n{_tail(self.dir / 'log' / f'slurmd-{h.name}.log', lines)}")
        return "\n".join(parts)

    # ---- daemons ---------------------------------------------------------------------------------------
    def _script(self, *args: str, host: netns.Host | None = None, timeout: float = 120) -> None:
        argv = ["bash", str(SCRIPT), *args]
        proc = subprocess.run(host.cmd(*argv) if host else argv, capture_output=True, text=True, timeout=timeout,
                              env=self.daemon_env)
        if proc.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {' '.join(args)} on {host.name if host else 'this machine'} "
                               f"exited {proc.returncode}:\n{proc.stderr[-3000:]}\n{self.daemon_logs(20)}")

    def start(self, timeout: float = 60) -> None:
        self._script("setup")
        self._script("start-munge")
        self._script("start-ctld", host=self.hosts[0])
        for h in self.hosts:
            self._script("start-slurmd", h.name, host=h)
        self._script("wait", str(int(timeout)), host=self.hosts[0], timeout=timeout + 30)

    def stop(self) -> None:
        """Cancel every job, stop the daemons by their pid files, then end whatever still runs on the hosts."""
        with contextlib.suppress(Exception):
            self._script("stop", host=self.hosts[0], timeout=120)
        for h in self.hosts:  # job processes a killed slurmd left behind; only processes in our namespaces
            for _ in range(50):
                pids = subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True, text=True).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
                time.sleep(0.1)


@contextlib.contextmanager
def start_cluster(state_dir: str | Path, n: int = 2, timeout: float = 60) -> Iterator[SlurmCluster]:
    """Hosts node1..nodeN, munged + slurmctld (node1) + one slurmd per host, up and idle; all gone on exit.
    ``state_dir`` (short: munge's socket lives in it) keeps config, state and logs; the caller removes it."""
    with netns.Hosts(n, prefix="node") as hosts:
        cluster = SlurmCluster(hosts, state_dir)
        try:
            cluster.start(timeout)
            yield cluster
        finally:
            cluster.stop()
