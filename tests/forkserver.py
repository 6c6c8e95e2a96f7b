"""Start `bigtrain` commands (``python -m MODULE`` or ``python SCRIPT``, on one rank or several) as forks of one
process that has already imported torch, DeepSpeed, megatron-core and transformers, instead of a fresh interpreter
(and a torchrun agent) per command.

Importing those costs ~4 s of CPU per process, more than most of the suite's tiny runs take to train; a 4-rank run
pays it 4 times over (plus the agent's own imports) on CI's 2 cores. Everything after the imports is what a real run
does: each rank is its own process running the module as ``__main__`` with the torch launcher variables (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) set, as the deepspeed launcher and Ray Train set them,
and the ranks meet over gloo. A fresh process's state is restored in each fork: the environment, the working
directory, Python's and numpy's random state, torch's default seed and thread count (torchrun's OMP_NUM_THREADS=1
for several ranks). The exit status is the lowest failed rank's (torchrun reports 1); a failed rank makes the
others get SIGTERM, as under torchrun.

Launchers themselves (torchrun's restarts and failure reports, the deepspeed launcher, SLURM, Ray) are tested by
running them for real: ``tests.helpers.bigtrain(..., fresh=True)`` and the modules that start them.

Protocol: one JSON request per line on stdin, one JSON answer per line on the original stdout (the server's own
fd 1 is pointed at its stderr, so nothing an import prints can corrupt an answer).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

# Third-party modules every command imports sooner or later; what is imported here is not imported again by a fork.
PRELOAD = ["torch", "numpy", "deepspeed", "megatron.core", "megatron.core.tensor_parallel", "transformers",
           "safetensors.torch", "sentencepiece", "tokenizers", "webdataset", "bigtrain.cli",
           "bigtrain.train.trainer", "bigtrain.convert.engine", "bigtrain.convert.export", "bigtrain.convert.hf",
           "bigtrain.eval.cli", "bigtrain.generate.inference", "bigtrain.finetune.cli", "bigtrain.data.preprocess"]
DEFAULT_TORCH_SEED = 67280421310721  # torch.initial_seed() of a fresh process


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _run_rank(req: dict, rank: int, port: int, threads: int) -> None:
    """In the fork: become a fresh ``python -m MODULE`` rank, run the command, exit with its status."""
    code = 1
    try:
        os.setpgid(0, 0)  # the server stops a run's ranks (and whatever they start) by process group
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python starts (SIGPIPE stays ignored)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_APPEND)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_APPEND)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        nproc = req["nproc"]
        if nproc > 1:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                              LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun sets it for several ranks
        import random

        import numpy as np
        import torch

        random.seed()
        np.random.seed()
        torch.manual_seed(DEFAULT_TORCH_SEED)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", threads)))
        import runpy

        try:
            # as `python -m MODULE ARGS` or `python SCRIPT ARGS` would run it
            if req.get("script"):
                sys.argv = [req["script"], *req["argv"]]
                runpy.run_path(req["script"], run_name="__main__")
            else:
                sys.argv = ["-m", *req["argv"]]  # runpy puts the module's file in sys.argv[0]
                runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a fresh interpreter
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit
            import threading

            threading._shutdown()  # as the interpreter does at exit: wait for non-daemon threads

            atexit._run_exitfuncs()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)


def _kill_groups(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _serve_one(req: dict, threads: int) -> dict:
    from bigtrain.parallel.dist import _free_port  # how a single bigtrain process picks its own

    port = _free_port() if req["nproc"] > 1 else 0
    sys.stdout.flush()
    sys.stderr.flush()
    pids: dict[int, int] = {}
    for rank in range(req["nproc"]):
        pid = os.fork()
        if pid == 0:
            _run_rank(req, rank, port, threads)
        try:
            os.setpgid(pid, pid)  # also here, so that a kill cannot come before the child has made its group
        except (PermissionError, ProcessLookupError):
            pass
        pids[pid] = rank
    codes: dict[int, int] = {}
    deadline = time.monotonic() + req["timeout"]
    failed_at = None
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, os.WNOHANG)
        running = [p for p in pids if pids[p] not in codes]
        if pid == 0:
            now = time.monotonic()
            if now > deadline:
                _kill_groups(running, signal.SIGKILL)
                for p in running:
                    os.waitpid(p, 0)
                _kill_groups(pids, signal.SIGKILL)
                return {"timeout": True}
            if failed_at is not None and now > failed_at + 30:  # the survivors ignored SIGTERM
                _kill_groups(running, signal.SIGKILL)
            time.sleep(0.02)
            continue
        if pid not in pids:
            continue
        codes[pids[pid]] = os.waitstatus_to_exitcode(status)
        if codes[pids[pid]] != 0 and failed_at is None and len(pids) > 1:
            # one rank failed: stop the others, as torchrun does, rather than wait for their collectives to time out
            failed_at = time.monotonic()
            _kill_groups([p for p in pids if pids[p] not in codes], signal.SIGTERM)
    _kill_groups(pids, signal.SIGKILL)  # whatever a rank started and left behind in its group
    return {"codes": [codes[r] for r in range(len(pids))]}


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    from bigtrain import quiet

    quiet.install()  # as `bigtrain` does before its commands import anything heavy
    import importlib

    importlib.import_module("numpy")  # its OpenBLAS starts a thread pool, stopped and restarted around a fork
    blas = _threads()
    for name in PRELOAD:
        importlib.import_module(name)
    threads = int(__import__("torch").get_num_threads())
    if _threads() != blas:  # a fork copies only the calling thread: a lock another thread held would stay locked
        raise SystemExit(f"forkserver: {_threads() - blas} more threads after the imports; forking is not safe")
    answers.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    answers.flush()
    for line in sys.stdin:
        answers.write(json.dumps(_serve_one(json.loads(line), threads)) + "\n")
        answers.flush()


_server: subprocess.Popen | None = None
_lock = threading.Lock()


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        from tests.helpers import REPO, env_for_tests

        log = open(os.path.join(tempfile.gettempdir(), f"bigtrain-forkserver-{os.getpid()}.log"), "w")
        _server = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env_for_tests())
        hello = _server.stdout.readline()
        if not hello:
            raise RuntimeError(f"the fork server did not start; see {log.name}")
        atexit.register(_stop)
    return _server


def _stop() -> None:
    if _server is not None and _server.poll() is None:
        _server.stdin.close()
        _server.wait(timeout=30)


def run(argv: list[str], *, nproc: int, env: dict[str, str], cwd: str, timeout: float, cmd: list[str],
        module: str = "bigtrain", script: str | None = None) -> subprocess.CompletedProcess:
    """What ``subprocess.run(cmd, capture_output=True, text=True)`` returns for ``python -m MODULE ARGV`` (or
    ``python SCRIPT ARGV``) on ``nproc`` ranks, run by the server."""
    with _lock, tempfile.TemporaryDirectory(prefix="bt-fork-") as d:
        out, err = os.path.join(d, "stdout"), os.path.join(d, "stderr")
        open(out, "w").close()
        open(err, "w").close()
        server = _start()
        server.stdin.write(json.dumps({"argv": argv, "module": module, "script": script, "nproc": nproc, "env": env,
                                       "cwd": cwd, "timeout": timeout, "stdout": out, "stderr": err}) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({server.poll()}) running {' '.join(cmd)}; see "
                               f"{tempfile.gettempdir()}/bigtrain-forkserver-{os.getpid()}.log")
        answer = json.loads(line)
        stdout, stderr = open(out, errors="replace").read(), open(err, errors="replace").read()
        if answer.get("timeout"):
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        failed = [c for c in answer["codes"] if c != 0]
        return subprocess.CompletedProcess(cmd, failed[0] if failed else 0, stdout, stderr)


if __name__ == "__main__":
    serve()
