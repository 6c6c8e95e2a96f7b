"""Ray Train path: the bigtrain Trainer inside a ``TorchTrainer`` worker group.

Ray Train makes the torch.distributed group (gloo on CPU, nccl on GPU) and sets RANK / WORLD_SIZE /
LOCAL_RANK; ``init_distributed`` adopts that group. Every checkpoint the trainer writes is reported with
``ray.train.report(..., checkpoint=Checkpoint.from_directory(dir))`` on every rank, so Ray knows the run
is making progress; on a failure ``FailureConfig(max_failures=K)`` restarts the whole group and the trainer
resumes from the newest complete checkpoint in the run directory (its own, authoritative copy).

Preemption: Ray Train runs the training function in a thread of each worker actor, where Python cannot take
signals, so the driver does: SIGTERM or SIGUSR1 to ``bigtrain launch ray-train`` (``ray job stop``, SLURM's
``--signal``, a batch script passing one on) writes the signal number to ``RUN/.bigtrain-stop``; rank 0 of the
trainer reads that file once a step and all-reduces it like its own signal flag, every rank saves at the end
of that step and returns, and the driver exits 143 ("stopped early; rerun to resume"). The file is removed
when the driver starts and when it ends, so a rerun resumes from the save made at the signal.

Where the ranks ran: each worker writes ``RUN/.ray-workers/rank-R.json`` (host name, node IP, Ray node id).

Test hook: ``BIGTRAIN_FAULT_AT_STEP=k`` makes rank ``BIGTRAIN_FAULT_RANK`` (default 0) raise once, when it
logs step k; a marker file in the run directory keeps later attempts from failing again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.train.callbacks import Callback

FAULT_AT_STEP = "BIGTRAIN_FAULT_AT_STEP"
FAULT_RANK = "BIGTRAIN_FAULT_RANK"
FAULT_KIND = "BIGTRAIN_FAULT_KIND"  # "raise" (default) or "kill": SIGKILL, like a host losing the process
FAULT_MARKER = ".bigtrain-fault-injected"
STOP_FILE = ".bigtrain-stop"
WORKERS_DIR = ".ray-workers"
EXIT_PREEMPTED = 143


class InjectedFault(RuntimeError):
    """Raised by the test hook to simulate a worker crash."""


class ReportCheckpoints(Callback):
    """Tell Ray Train about each checkpoint. Ray's report is a collective, so every rank calls it; only rank 0
    hands over the directory (all ranks share it), so Ray keeps one copy of each save, not one per rank."""

    def on_checkpoint(self, trainer, ckpt_dir: Path) -> None:
        import ray.train
        from ray.train import Checkpoint

        ckpt = Checkpoint.from_directory(str(ckpt_dir)) if trainer.info.rank == 0 else None
        ray.train.report({"step": trainer.step}, checkpoint=ckpt)


class FaultInjection(Callback):
    """Crash one worker once at a given step (BIGTRAIN_FAULT_AT_STEP); for tests of the restart path."""

    def __init__(self, run_dir: Path):
        self.step = int(os.environ.get(FAULT_AT_STEP, "0") or 0)
        self.rank = int(os.environ.get(FAULT_RANK, "0") or 0)
        self.marker = Path(run_dir) / FAULT_MARKER

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        if (self.step and "split" not in record and record["step"] == self.step
                and trainer.info.rank == self.rank and not self.marker.exists()):
            self.marker.write_text(f"rank {self.rank} failed at step {self.step}\n")
            if os.environ.get(FAULT_KIND) == "kill":
                print(f"{FAULT_AT_STEP}={self.step}: rank {self.rank} kills itself (SIGKILL)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"{FAULT_AT_STEP}={self.step}: rank {self.rank} fails on purpose")


def _record_placement(run_dir: Path, rank: int, world: int) -> None:
    import json
    import socket

    import ray

    ctx = ray.get_runtime_context()
    rec = {"rank": rank, "world_size": world, "host": socket.gethostname(), "node_id": ctx.get_node_id(),
           "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
    out = run_dir / WORKERS_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".rank-{rank}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec) + "\n")
    os.replace(tmp, out / f"rank-{rank}.json")
    print(f"ray-train: rank {rank}/{world} on {rec['host']} ({rec['node_ip']}, node {rec['node_id'][:12]})",
          flush=True)


class _StopOnSignal:
    """SIGTERM / SIGUSR1 to the driver → RUN/.bigtrain-stop, which the workers' trainer polls (see above)."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if first:
            tmp = self.stop_file.with_name(f"{self.stop_file.name}.{os.getpid()}.tmp")
            tmp.write_text(f"{signum}\n")
            os.replace(tmp, self.stop_file)
            print(f"ray-train: got signal {signum}; the workers save at the end of their step and stop",
                  flush=True)

    def __enter__(self):
        self.stop_file.unlink(missing_ok=True)  # a request from an earlier attempt is done with
        import threading

        if threading.current_thread() is threading.main_thread():
            # After ray.init, which installs its own SIGTERM handler (sys.exit) in the driver.
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.stop_file.unlink(missing_ok=True)


def _worker(cfg: dict[str, Any]) -> None:
    """The training function each Ray Train worker runs."""
    os.environ.update(cfg["env"])
    if os.path.isdir(cfg["cwd"]):
        os.chdir(cfg["cwd"])  # relative paths in overrides mean what they meant to the driver
    from bigtrain.config.job import load_job_config
    from bigtrain.train.trainer import Trainer

    job = load_job_config(cfg["config"], cfg["overrides"])
    run_dir = Path(cfg["run_dir"])
    init_fn = None
    if job.lora.enabled:  # a LoRA run resumes on the base its checkpoint records (checked by the driver first)
        from bigtrain.train.init import recorded_lora_base

        init_fn = recorded_lora_base(run_dir, job.model)
    trainer = Trainer(job, run_dir, callbacks=[ReportCheckpoints(), FaultInjection(run_dir)],
                      stop_file=run_dir / STOP_FILE, init_fn=init_fn)
    trainer.setup()
    _record_placement(run_dir, trainer.info.rank, trainer.info.world_size)
    # No close() on an error: its barrier would wait for ranks still inside a collective, and the
    # exception would never reach Ray Train. Ray tears the group down and restarts it.
    trainer.fit()
    trainer.close()


def run_ray_train(config: str, overrides: list[str], run_dir: str, *, num_workers: int, max_failures: int = 3,
                  ray_address: str | None = None, cpus_per_worker: float = 1.0) -> int:
    if num_workers < 1:
        raise BigtrainError(f"--num-workers must be at least 1, got {num_workers}")
    from bigtrain.config.job import load_job_config

    config_path = Path(config).resolve()
    job = load_job_config(config_path, overrides)  # bad configs fail here, before any worker starts
    job.check_world(num_workers)
    if job.lora.enabled:
        from bigtrain.checkpoint.manager import latest_checkpoint, read_meta

        found = latest_checkpoint(run_dir)
        if found is None or not read_meta(found).get("lora_base"):
            raise BigtrainError(f"lora.rank={job.lora.rank}: ray-train takes no --init, so a LoRA run starts under "
                                "torchrun, the deepspeed launcher or SLURM (bigtrain finetune / train --init); "
                                "ray-train resumes it from its checkpoint")
    run_dir_path = Path(run_dir).resolve()
    run_dir_path.mkdir(parents=True, exist_ok=True)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from bigtrain.train.trainer import HOLD_ENV

    # The test hooks reach the workers through the loop config, not a runtime_env (which would clash with
    # the one of a `ray job submit`). DeepSpeed's accelerator is chosen in each worker, where its GPUs are.
    env = {k: v for k, v in os.environ.items() if k in (FAULT_AT_STEP, FAULT_RANK, FAULT_KIND, HOLD_ENV) and v}
    if not ray.is_initialized():
        ray.init(address=ray_address)
    # GPUs are wherever the workers will run, not necessarily here (a `ray job submit` driver often runs on a
    # CPU-only head): one GPU per worker when the cluster has them.
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": str(config_path), "overrides": list(overrides), "run_dir": str(run_dir_path),
                           "cwd": os.getcwd(), "env": env},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker}),
        run_config=RunConfig(name="bigtrain", storage_path=str(run_dir_path / "ray"),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=max(1, job.checkpoint.keep))),
    )
    with _StopOnSignal(run_dir_path / STOP_FILE) as stop:
        try:
            result = trainer.fit()
        except Exception as e:  # TrainingFailedError: the group failed more than max_failures times
            raise BigtrainError(f"Ray Train gave up after {max_failures} restart(s): {e}") from e
    if getattr(result, "error", None):
        raise BigtrainError(f"Ray Train failed: {result.error}")
    if stop.signum:
        print(f"ray-train: stopped early on signal {stop.signum}; checkpoint saved in {run_dir_path / 'checkpoints'}"
              f" (exit {EXIT_PREEMPTED}: rerun to resume)", flush=True)
        return EXIT_PREEMPTED
    print(f"ray-train: finished; checkpoints in {run_dir_path / 'checkpoints'}", flush=True)
    return 0
