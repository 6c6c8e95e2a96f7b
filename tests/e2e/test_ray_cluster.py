"""A real Ray head (cluster/ray/local-head.sh: `ray start --head --dashboard-host 127.0.0.1`) takes
`ray job submit --working-dir .` jobs: preprocessing while a second node (`ray start --address`) has joined,
with tasks on both nodes and the same bytes as a local run, then a 2-worker Ray Train run
(`bigtrain launch ray-train`) in which one worker raises at step 7 on its first attempt. Ray Train
restarts the group, the trainer resumes from the step-5 checkpoint, both jobs end SUCCEEDED, and the
losses equal those of the same job run uninterrupted under torchrun.

The head gets its own ports and temp dir and is stopped through its process group, so other Ray
instances on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests.helpers import REPO, TINY, bigtrain, env_for_tests, losses, metrics

HEAD = REPO / "cluster" / "ray" / "local-head.sh"
RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
TRAIN = ["model.vocab_size=512", "train.max_steps=12", "train.log_interval=1", "checkpoint.interval=5",
         "model.n_layers=2"]

pytestmark = pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = env_for_tests()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "token"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def head():
    # Short path: Ray's unix sockets live under it, and pytest's tmp paths exceed the 107-byte limit.
    state = tempfile.mkdtemp(prefix="btray-", dir="/tmp")
    ports = {k: str(_free_port()) for k in ("RAY_GCS_PORT", "RAY_DASHBOARD_PORT", "RAY_CLIENT_PORT",
                                             "RAY_AGENT_PORT")}
    env = _env(BIGTRAIN_RAY_DIR=str(state), RAY_NUM_CPUS="2", **ports)
    for _attempt in range(2):  # on a loaded machine a Ray component can time out while starting
        start = subprocess.run(["bash", str(HEAD), "start"], capture_output=True, text=True, env=env,
                               timeout=180)
        if start.returncode == 0:
            break
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        yield f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}", env["RAY_GCS_PORT"]
    finally:
        subprocess.run(["bash", str(HEAD), "stop"], capture_output=True, env=env, timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def submit(address: str, *entrypoint: str, env_vars: dict[str, str] | None = None) -> tuple[str, str]:
    """`ray job submit` from the repository root; returns (final status, output)."""
    job_id = f"bigtrain-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", "."]
    if env_vars:
        import json

        cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    proc = subprocess.run([*cmd, "--", *entrypoint], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=480)
    status = subprocess.run([RAY, "job", "status", "--address", address, job_id], capture_output=True,
                            text=True, env=_env(), cwd=REPO, timeout=60)
    out = proc.stdout + proc.stderr
    text = status.stdout + status.stderr  # "Job 'ID' succeeded" once finished
    for state in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
        if re.search(rf"\b{state}\b", text, re.IGNORECASE):
            return state, out
    return f"unknown ({status.stdout.strip()[-300:]} {status.stderr.strip()[-300:]})", out


@contextlib.contextmanager
def second_node(gcs_port: str):
    """A second Ray node on this machine (`ray start --address`, 1 CPU) joined to the head while in use."""
    log = tempfile.NamedTemporaryFile(prefix="btray-node-", suffix=".log", delete=False)
    proc = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "1", "--block",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=_env(),
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:  # wait until the head counts two nodes
            st = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs_port}"], capture_output=True,
                                text=True, env=_env(), timeout=60)
            if len(re.findall(r"^\s*1 node_", st.stdout, re.MULTILINE)) == 2:
                break
            assert proc.poll() is None and time.time() < deadline, open(log.name).read()[-3000:]
            time.sleep(1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        os.unlink(log.name)
        # Later jobs must not be placed on the node that left: wait until the head counts one node again.
        deadline = time.time() + 120
        while time.time() < deadline:
            st = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs_port}"], capture_output=True,
                                text=True, env=_env(), timeout=60)
            if len(re.findall(r"^\s*1 node_", st.stdout, re.MULTILINE)) == 1:
                break
            time.sleep(1)


@pytest.fixture(scope="module")
def dataset(head, tmp_path_factory):
    address, gcs_port = head
    work = tmp_path_factory.mktemp("ray-data")
    bigtrain("tokenizer", "train", "--input", "data/python-docs.jsonl.gz", "--vocab-size", "512",
             "--output", str(work / "tok"))
    # Uncompressed, so that small chunks of the one file spread over both nodes' CPUs.
    (work / "docs.jsonl").write_bytes(gzip.decompress((REPO / "data/python-docs.jsonl.gz").read_bytes()))
    args = ["--input", str(work / "docs.jsonl"), "--tokenizer", str(work / "tok"), "--num-shards", "2"]
    with second_node(gcs_port):
        status, out = submit(address, "bigtrain", "preprocess", *args, "--output", str(work / "data"),
                             "--chunk-size", "128k", "--ray-address", "auto")
    return work / "data", status, out, args


def test_job_submit_preprocess_on_two_nodes(dataset, tmp_path):
    data, status, out, args = dataset
    assert status == "SUCCEEDED", out[-5000:]
    assert "preprocess: wrote" in out
    records = [json.loads(p.read_text()) for p in (data / ".state" / "chunks").glob("*.json")]
    assert len(records) == 26 and len({r["node"] for r in records}) == 2  # tasks ran on both nodes
    # The same bytes as one local process with one worker and other chunks.
    bigtrain("preprocess", *args, "--output", str(tmp_path / "local"), "--workers", "1", "--quiet")
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file() and ".state" not in p.parts)
    assert files and files == sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*")
                                     if p.is_file() and ".state" not in p.parts)
    for f in files:
        assert (data / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f


def test_job_submit_ray_train_restarts_a_failed_worker(head, dataset, tmp_path):
    data, status, _, _ = dataset
    if status != "SUCCEEDED":
        pytest.skip("preprocessing failed (see test_job_submit_preprocess)")
    run = tmp_path / "ray-run"
    status, out = submit(head[0], "bigtrain", "launch", "ray-train", "configs/tiny-cpu.yaml", "--run-dir", str(run),
                         "--num-workers", "2", "--max-failures", "1", "--ray-address", "auto",
                         f"data.path={data}", *TRAIN, env_vars={"BIGTRAIN_FAULT_AT_STEP": "7",
                                                                  "BIGTRAIN_FAULT_KIND": "kill"})
    assert status == "SUCCEEDED", out[-6000:]
    assert "rank 0 kills itself (SIGKILL)" in out  # the first attempt did die
    assert (run / ".bigtrain-fault-injected").exists()
    assert f"resumed from {run}/checkpoints/step_00000005" in out
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    # Ray holds one copy of each save (rank 0's; every rank reported one before), and prunes the ones it
    # tracks to checkpoint.keep=2 (tiny-cpu.yaml). Whether it still tracks the copy reported before the
    # worker group restarted (step 5) depends on timing in Ray 2.60: that one may stay.
    copies = sorted(p for p in (run / "ray").rglob("checkpoint_*") if p.is_dir())
    steps = sorted(json.loads((c / "bigtrain.json").read_text())["step"] for c in copies)
    assert steps in ([10, 12], [5, 10, 12]), steps
    # The same job, uninterrupted, under torchrun: identical losses.
    ref = tmp_path / "torchrun"
    bigtrain("train", TINY, "--run-dir", str(ref), f"data.path={data}", *TRAIN, nproc=2)
    assert losses(run) == losses(ref)
    assert [r["samples"] for r in metrics(run)] == [r["samples"] for r in metrics(ref)]
