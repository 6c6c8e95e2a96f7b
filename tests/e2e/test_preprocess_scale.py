"""`bigtrain preprocess` at scale, on one uncompressed jsonl file of the bundled corpus cut into many chunks:
the file is read by many tasks, shards meet the size target, and a driver killed with SIGKILL mid-run is
resumed chunk by chunk, by the same command run again, to the same bytes as an uninterrupted run (with another
chunk size and worker count, which must not matter either). The CLI runs start their own local Ray. Multi-node scheduling is in tests/e2e/test_ray_cluster.py.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigtrain.data.preprocess import PreprocessJob
from bigtrain.tokenizer import train_tokenizer
from tests.helpers import REPO, env_for_tests

CORPUS = REPO / "data" / "python-docs.jsonl.gz"
SHARD = 200_000


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".state" not in p.relative_to(out).parts}


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / ".state" / "chunks").glob("*.json"))]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    docs = root / "docs.jsonl"
    docs.write_bytes(gzip.decompress(CORPUS.read_bytes()))
    train_tokenizer([CORPUS], 2000, root / "tok")
    return {"root": root, "docs": docs, "tok": root / "tok"}


def _job(big, out, **kw) -> PreprocessJob:
    return PreprocessJob([str(big["docs"])], str(big["tok"]), str(out), shard_size=SHARD,
                         heldout_fraction=0.02, quiet=True, **kw)


@pytest.fixture(scope="module")
def ref(ray_local, big):
    out = big["root"] / "ref"
    job = _job(big, out, chunk_size="256k", workers=2)
    return out, job.run(), job.report


def test_one_big_file_is_read_by_many_tasks(ref, big):
    out, m, report = ref
    recs = _records(out)
    size = big["docs"].stat().st_size
    assert report["chunks"] == len(recs) == -(-size // 256_000)  # 13
    ranges = [tuple(p[2:]) for r in recs for p in r["pieces"]]
    assert all(p[0] == str(big["docs"]) and p[1] == "range" for r in recs for p in r["pieces"])
    assert sorted(ranges) == [(a, min(a + 256_000, size)) for a in range(0, size, 256_000)]
    assert len({r["pid"] for r in recs}) == 2  # two worker processes took chunks of the same file
    lines = sum(1 for line in big["docs"].read_bytes().splitlines() if line.strip())
    assert sum(r["stats"]["0"]["read"] for r in recs) == m["inputs"][0]["documents_read"] == lines
    # one object per chunk task and per shard write, plus the tokenizer
    assert report["ray_objects"] == 1 + report["chunks"] + len(m["shards"])


def test_shards_meet_the_size_target(ref):
    out, m, _ = ref
    train = [s for s in m["shards"] if s["split"] == "train"]
    assert len(train) >= 10
    for s in train:
        assert (out / s["path"]).stat().st_size == s["bytes"]
        assert abs(s["bytes"] - SHARD) <= 0.1 * SHARD, (s["path"], s["bytes"])
    assert m["shard_size"] == SHARD and m["num_shards"] == len(train)


def test_driver_killed_mid_run_resumes_per_chunk(ref, big):
    out = big["root"] / "killed"
    cmd = [sys.executable, "-m", "bigtrain", "preprocess", "--input", str(big["docs"]), "--tokenizer",
           str(big["tok"]), "--output", str(out), "--shard-size", str(SHARD), "--heldout-fraction", "0.02",
           "--chunk-size", "128k", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=env_for_tests(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    chunks = out / ".state" / "chunks"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if chunks.is_dir() and len(list(chunks.glob("*.json"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)  # the driver only; Ray's processes notice it is gone
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray agents the driver left behind
        except ProcessLookupError:
            pass
    pids_before = {r["chunk"]: r["pid"] for r in _records(out)}
    done_before = set(pids_before)
    total = -(-big["docs"].stat().st_size // 128_000)
    assert 3 <= len(done_before) < total
    assert not (out / "manifest.json").exists()

    # The same command again, with 2 workers: its own Ray again, progress on stderr, the summary on stdout.
    again = subprocess.run([*cmd[:-2], "2"], env=env_for_tests(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    m = re.search(r"preprocess: (\d+) chunks of up to 128,000 bytes \((\d+) reused\), (\d+) Ray objects", again.stdout)
    assert m and int(m.group(1)) == total and int(m.group(2)) >= len(done_before), again.stdout
    assert int(m.group(3)) == 1 + (total - int(m.group(2))) + len(ref[1]["shards"])  # tasks only for the rest
    assert "preprocess: wrote" in again.stdout and "docs.jsonl" in again.stdout and "duplicate=" in again.stdout
    assert "tokenize: 100%" in again.stderr and "write: 100%" in again.stderr
    assert {r["chunk"]: r["pid"] for r in _records(out) if r["chunk"] in done_before} == pids_before
    assert _files(out) == _files(ref[0])  # chunk size, worker count and the kill changed nothing
    assert not (out / ".work").exists()


def test_size_options_are_checked(big, tmp_path):
    with pytest.raises(Exception, match=r"--shard-size 12 apples: expected a size such as 256MB"):
        PreprocessJob([str(big["docs"])], str(big["tok"]), str(tmp_path), shard_size="12 apples").run()
    with pytest.raises(Exception, match=r"--num-shards and --shard-size: give one of them"):
        PreprocessJob([str(big["docs"])], str(big["tok"]), str(tmp_path), shard_size="1MB", num_shards=2).run()
