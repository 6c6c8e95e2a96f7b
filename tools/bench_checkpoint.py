"""Checkpoint save and load GB/s against ``dd``'s write bandwidth on the same disk (CPU, one process).

    DS_ACCELERATOR=cpu python tools/bench_checkpoint.py [--dir /tmp] [--params-m 60] [--repeat 2]

The engine comes from ``build_engine`` (fp32, one process, so ZeRO stage 0: parameters + Adam moments,
12 bytes per parameter on disk) and is saved with ``CheckpointManager.save`` (DeepSpeed's files through
bigtrain's checkpoint engine, which hashes and syncs them as it writes, then bigtrain.json) and loaded the way a resume does it (``verify_checkpoint``,
then ``CheckpointManager.load``). Durable save time includes ``os.sync()`` so it compares with
``dd conv=fdatasync``, the disk's sustained write bandwidth. Load reads what the save just wrote, so
it comes mostly from the page cache (dropping caches needs privileges this benchmark does not ask
for); ``dd`` reading the same-sized file is shown beside it for the same reason. Target: save and
load ≥ 0.5 × the disk's write bandwidth.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dd_write(path: Path, mb: int) -> float:
    """Write bandwidth in GB/s of dd with fdatasync (the disk, not the page cache)."""
    out = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mb}", "conv=fdatasync"],
                         capture_output=True, text=True, check=True).stderr
    return _dd_rate(out, mb)


def dd_read(path: Path, mb: int) -> float:
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True,
                         check=True).stderr
    return _dd_rate(out, mb)


def _dd_rate(stderr: str, mb: int) -> float:
    m = re.search(r"copied, ([\d.]+) s", stderr)
    return mb * 2**20 / float(m.group(1)) / 1e9


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="directory on the disk to measure")
    ap.add_argument("--params-m", type=int, default=60, help="model size in millions of parameters (about)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    logging.disable(logging.WARNING)
    import torch.distributed as dist

    from bigtrain.checkpoint.manager import CheckpointManager, verify_checkpoint
    from bigtrain.config.job import load_job_config
    from bigtrain.train.trainer import build_engine

    work = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    layers = max(1, round((args.params_m * 1e6 - 2 * 32000 * 512) / 3.4e6))
    job = load_job_config(str(REPO / "configs" / "tiny-cpu.yaml"),
                          [f"model.n_layers={layers}", "model.d_model=512", "model.n_heads=8", "model.n_kv_heads=8",
                           "model.ffn_hidden=1536", "model.vocab_size=32000", "model.seq_len=32",
                           "train.micro_batch_size=1", "train.global_batch_size=1", "parallel.zero_stage=0"])
    built = build_engine(job)
    engine = built.engine
    # One step so the optimizer state (Adam moments) exists and is saved.
    import torch

    x = torch.randint(0, job.model.vocab_size, (1, job.model.seq_len))
    engine.backward(engine(x, x))
    engine.step()
    print(f"load average before: {os.getloadavg()[0]:.2f}; disk of {work}")
    mgr = CheckpointManager(work / "run", keep=1)
    rows = []
    for r in range(args.repeat):
        load_avg = os.getloadavg()[0]
        os.sync()
        t0 = time.perf_counter()
        engine_dir = work / "raw"
        engine.save_checkpoint(str(engine_dir), tag="t", save_latest=False)
        t_engine = time.perf_counter() - t0
        shutil.rmtree(engine_dir)
        os.sync()
        t0 = time.perf_counter()
        ckpt = mgr.save(engine, 10 + r, {"config": job.to_dict(), "step": 10 + r})
        t_save = time.perf_counter() - t0
        os.sync()
        t_durable = time.perf_counter() - t0
        nbytes = dir_bytes(ckpt)
        t0 = time.perf_counter()
        reason = verify_checkpoint(ckpt)
        t_verify = time.perf_counter() - t0
        assert reason is None, reason
        t0 = time.perf_counter()
        CheckpointManager.load(engine, ckpt)
        t_load = time.perf_counter() - t0
        rows.append({"bytes": nbytes, "engine": t_engine, "save": t_save, "durable": t_durable, "verify": t_verify,
                     "load": t_load, "load_avg": load_avg})
    mb = max(256, int(rows[-1]["bytes"] / 2**20))
    ddfile = work / "dd.bin"
    dd_w = max(dd_write(ddfile, mb) for _ in range(2))
    dd_r = dd_read(ddfile, mb)
    ddfile.unlink()
    best = {k: min(r[k] for r in rows) for k in ("engine", "save", "durable", "verify", "load")}
    gb = rows[-1]["bytes"] / 1e9
    print(f"model {job.model.num_params() / 1e6:.1f}M parameters, fp32 ZeRO-{engine.zero_optimization_stage()}: checkpoint {gb:.2f} GB; "
          f"best of {args.repeat}")
    print(f"{'operation':<52} {'seconds':>8} {'GB/s':>7} {'× dd write':>10}")
    table = [
        ("dd write, conv=fdatasync (the disk)", mb * 2**20 / 1e9 / dd_w, dd_w),
        ("dd read (page cache)", mb * 2**20 / 1e9 / dd_r, dd_r),
        ("engine.save_checkpoint alone (hashed, fsync-ed)", best["engine"], gb / best["engine"]),
        ("bigtrain save (engine + bigtrain.json)", best["save"], gb / best["save"]),
        ("bigtrain save, then os.sync", best["durable"], gb / best["durable"]),
        ("verify (sha256 of every file, as resume does)", best["verify"], gb / best["verify"]),
        ("load (CheckpointManager.load)", best["load"], gb / best["load"]),
        ("verify + load (a resume)", best["verify"] + best["load"], gb / (best["verify"] + best["load"])),
    ]
    for name, sec, rate in table:
        print(f"{name:<52} {sec:8.2f} {rate:7.2f} {rate / dd_w:10.2f}")
    print(f"target: save (durable) and load ≥ 0.50 × dd write; load average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    from bigtrain.parallel.topology import teardown

    teardown()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
