"""The training loop over a DeepSpeed engine.

The trainer owns the loop, logging and checkpoint cadence; the engine owns the optimizer step, ZeRO
and the pipeline schedule. One step = one optimizer update over ``global_batch_size`` sequences.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from bigtrain.checkpoint.manager import TOKENIZER_SUBDIR, CheckpointManager, latest_verified_checkpoint, read_meta
from bigtrain.config.job import JobConfig
from bigtrain.data.build import build_loader, dataset_tokenizer
from bigtrain.errors import BigtrainError
from bigtrain.io import atomic_write_text
from bigtrain.train.callbacks import (Callback, Checkpointing, Console, Evaluation, LossPlot, MetricsFile, SpikeDetection,
                                      TensorBoard)
from bigtrain.train.flops import flops_per_token, peak_flops
from bigtrain.train.guard import GradNormClip, GuardedLoss, SkippingAdamW
from bigtrain.train.schedule import lr_factor

# Written when a run saved at SIGTERM / SIGUSR1 and stopped early (see Trainer._record_stop).
STOPPED_FILE = ".bigtrain-stopped"
# Test-only: after step k every rank waits (up to HOLD_TIMEOUT_S) for a stop request, once rank 0 has written
# RUN/HELD_FILE, so that a test's signal lands at a known step instead of after a guessed sleep.
HOLD_ENV = "BIGTRAIN_FAULT_HOLD_AT_STEP"
HELD_FILE = ".bigtrain-held"
HOLD_TIMEOUT_S = 120.0


def unpartitioned_fp32(job: JobConfig, dp: int) -> bool:
    """True when DeepSpeed gives the optimizer the model's own fp32 gradients (no ZeRO, no mixed precision)."""
    return job.train.precision == "fp32" and job.parallel.zero_stage_at(dp, "fp32") == 0


def deepspeed_config(job: JobConfig, dp: int) -> dict[str, Any]:
    t, p = job.train, job.parallel
    zero: dict[str, Any] = {"stage": p.zero_stage_at(dp, t.precision)}
    if zero["stage"] == 3:
        zero["stage3_param_persistence_threshold"] = p.zero3_persistence_elements
    if p.bucket_elements:
        n = p.bucket_elements
        zero.update(reduce_bucket_size=n, allgather_bucket_size=n, stage3_prefetch_bucket_size=n)
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * dp),
        # On the fp32 ZeRO-0 path bigtrain clips (SkippingAdamW.clip): DeepSpeed's clip there leaves the
        # norm unreported and counts only the first pipeline stage's untied, replicated parameters.
        "gradient_clipping": 0.0 if unpartitioned_fp32(job, dp) else t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's own data loader is unused; bigtrain's loader deals samples to ranks.
        "dataloader_drop_last": True,
    }


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_tokenizer(job: JobConfig):
    """The run's tokenizer: ``tokenizer`` from the config, else the one the datasets were made with.
    Checked against the model's vocabulary and the datasets' tokenizer; None for synthetic/token files."""
    from bigtrain.tokenizer import load_tokenizer

    from_data = dataset_tokenizer(job)
    path = job.tokenizer or (from_data or {}).get("path")
    if path is None:
        return None
    tok = load_tokenizer(path)
    if tok.vocab_size > job.model.vocab_size:
        raise BigtrainError(f"tokenizer {path} has {tok.vocab_size} tokens but model.vocab_size="
                            f"{job.model.vocab_size}; set model.vocab_size={tok.vocab_size} (or larger)")
    if from_data and from_data.get("sha256") != tok.sha256:
        raise BigtrainError(f"tokenizer {path} is not the tokenizer data.path was preprocessed with "
                            f"({from_data.get('path')})")
    eos = (from_data or {}).get("eos_id", tok.eos_id)
    if eos != tok.eos_id and 0 <= eos < tok.vocab_size:  # preprocessed with --eos-token
        tok = tok.with_eos(tok.id_to_piece(eos))
    return tok


def _set_cpu_threads() -> None:
    # Several ranks on one CPU box must share its cores, or they thrash.
    if torch.cuda.is_available() or os.environ.get("OMP_NUM_THREADS"):
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))


@dataclass
class BuiltEngine:
    engine: Any  # deepspeed.DeepSpeedEngine (a PipelineEngine when PP > 1)
    topo: Any  # bigtrain.parallel.topology.Topology
    info: Any  # bigtrain.parallel.dist.DistInfo
    loss_fn: GuardedLoss


def build_engine(job: JobConfig, init_fn: Callable[[torch.nn.Module, Any], None] | None = None) -> BuiltEngine:
    """Process groups, the model in its layout, AdamW and the DeepSpeed engine around them.

    ``init_fn(module, topo)``, when given, sets this rank's weights (e.g. from a checkpoint to fine-tune)
    before the engine and its optimizer partitions are made from them.

    The one place an engine is made: the trainer and the checkpoint converter both call it, so a
    converted checkpoint always matches what training loads. Collective: every rank calls it.
    """
    from bigtrain.parallel.dist import init_distributed

    info = init_distributed()
    dp = job.check_world(info.world_size)

    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    from bigtrain.checkpoint import torch_engine
    from bigtrain.model.llama import layer_specs
    from bigtrain.parallel.pipeline import build_module
    from bigtrain.parallel.topology import MegatronMPU, model_parallel_config, setup_parallel

    _set_cpu_threads()
    topo = setup_parallel(job.parallel, info)
    torch.manual_seed(job.train.seed)
    specs = layer_specs(job.model, model_parallel_config(job.parallel), job.train.seed)
    loss_fn = GuardedLoss()
    module = build_module(specs, topo, loss_fn, job.train.activation_checkpointing, job.parallel.partition_method)
    if init_fn is not None:
        init_fn(module, topo)
    if job.lora.enabled:  # after the base weights are set: apply_lora freezes them
        from bigtrain.model.lora import apply_lora

        apply_lora(module, job.model, job.lora, job.train.seed, topo.tp, topo.tp_rank)
    if job.train.compile:
        from bigtrain.train.module import compile_blocks

        n = compile_blocks(module)
        if info.rank == 0:  # said, so that a compile that found nothing to compile cannot pass for one
            print(f"train.compile: {n} transformer blocks of the first stage compiled (the first steps pay for it)",
                  flush=True)
    t = job.train
    optimizer = SkippingAdamW(_param_groups(module, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    if unpartitioned_fp32(job, dp):
        from megatron.core import parallel_state

        optimizer.clip = GradNormClip(t.grad_clip, parallel_state.get_model_parallel_group(), topo.tp_rank)
    # The LR is set from the step before every update (Trainer.train_step) rather than by a scheduler
    # object, so skipped steps and resumed runs follow the same schedule under every ZeRO stage.
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(job, dp),
                                           mpu=None if topo.pp > 1 else MegatronMPU(), dist_init_required=False)
    torch_engine.install(engine)
    return BuiltEngine(engine, topo, info, loss_fn)


class Trainer:
    """The loop: the LR schedule, non-finite steps, stop requests, and callbacks around each step; a
    :class:`~bigtrain.train.module.TrainModule` runs the step itself."""

    def __init__(self, job: JobConfig, run_dir: str | Path, callbacks: list[Callback] | None = None,
                 init_fn: Callable[[torch.nn.Module, Any], None] | None = None,
                 loader_factory: Callable[..., Any] | None = None, stop_file: str | Path | None = None):
        """``init_fn(module, topo)``: starting weights (see build_engine; a checkpoint to resume wins).
        ``loader_factory(job, dp_rank, dp_size, split)``: the data (default: build_loader over data.path).
        ``stop_file``: a file whose appearance asks for a save and a stop, like SIGTERM (a launcher whose
        workers cannot take signals, e.g. Ray Train, writes it; rank 0 looks for it once a step)."""
        self.job = job
        self.init_fn = init_fn
        self.loader_factory = loader_factory
        self.run_dir = Path(run_dir)
        self.extra_callbacks = callbacks or []
        self.start_step = 0
        self.step = 0
        self.skipped_steps = 0
        self.stop_signal = 0  # the stop all ranks agreed on (0: none); only _stop_requested writes it
        self._requested = 0  # a stop this rank was asked for (signal handler, stop file), not yet agreed
        self.stop_reason: str | None = None
        self.stop_file = Path(stop_file) if stop_file else None

    # ----------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        job = self.job
        self.tokenizer = resolve_tokenizer(job)
        lora = job.lora.enabled
        if lora and not hasattr(self.init_fn, "reference"):  # a train.init.InitWeights
            raise BigtrainError(f"lora.rank={job.lora.rank} trains adapters on fixed starting weights: give them "
                                "with --init CKPT_OR_HF_DIR")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        built = build_engine(job, self.init_fn)
        self.engine, self.topo, self.info, self.loss_fn = built.engine, built.topo, built.info, built.loss_fn
        self.lora_base = None  # a LoRA run's base weights: {path, kind, sha256}, checked on resume and export
        if lora:
            ref = [self.init_fn.reference() if self.info.rank == 0 else None]
            dist.broadcast_object_list(ref, src=0)
            self.lora_base = ref[0]
        from bigtrain.train.module import train_module

        t, dp = job.train, self.topo.dp
        self.make_loader = self.loader_factory or build_loader
        self.loader = self.make_loader(job, self.topo.dp_rank, dp, split="train")
        gas = t.global_batch_size // (t.micro_batch_size * dp)
        self.module = train_module(self.engine, self.topo, self.info.device, gas)
        self.tokens_per_step = t.global_batch_size * job.model.seq_len
        self.end_step = min(t.max_steps, t.stop_after) if t.stop_after else t.max_steps
        self.checkpoints = CheckpointManager(self.run_dir, job.checkpoint.keep)
        ran = self.layout()["zero_stage"]
        if self.info.rank == 0 and ran != job.parallel.zero_stage:
            print(f"parallel.zero_stage={job.parallel.zero_stage} runs as ZeRO stage {ran}: data-parallel "
                  "size 1 has nothing to partition", flush=True)
        self._resume()
        self.callbacks = self.default_callbacks() + self.extra_callbacks
        self.peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        self.flops_per_token = flops_per_token(job.model)

    def default_callbacks(self) -> list[Callback]:
        t = self.job.train
        # bpb needs every target of the evaluated windows counted: pretraining data without document masking
        bpb = (self.loader_factory is None and self.tokenizer is not None and not self.job.data.document_masking
               and dataset_tokenizer(self.job) is not None)
        callbacks: list[Callback] = [Evaluation(t.eval_interval, bpb), Checkpointing(self.job.checkpoint.interval)]
        if self.info.rank == 0:
            callbacks += [SpikeDetection(t.spike_factor), MetricsFile(self.run_dir), Console(),
                          TensorBoard(self.run_dir), LossPlot(self.run_dir)]
        return callbacks

    def _resume(self) -> None:
        # Rank 0 verifies checksums once; every rank loads the checkpoint it chose.
        chosen = [None]
        if self.info.rank == 0:
            found = latest_verified_checkpoint(self.run_dir)
            chosen = [str(found) if found else None]
        dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None:
            return
        ckpt = Path(chosen[0])
        meta = read_meta(ckpt)
        if meta["config"].get("model") != self.job.model.to_dict():
            raise BigtrainError(f"{ckpt}: the checkpoint's model config differs from this run's; "
                                "use a new --run-dir or the checkpoint's config")
        self._check_layout(ckpt, meta.get("layout") or {})
        self._check_lora(ckpt, meta)
        CheckpointManager.load(self.engine, ckpt, include_frozen=self.lora_base is None)
        if self.lora_base is not None:
            self._check_loaded_adapters(ckpt)
        self.loader.load_state_dict(meta["loader"])
        self.start_step = self.step = int(meta["step"])
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        if self.info.rank == 0:
            # A preemption warning (SLURM's --signal=USR1@N) must leave time for a step and a save.
            took = f"; its save took {meta['save_seconds']:.1f} s" if "save_seconds" in meta else ""
            print(f"resumed from {ckpt} at step {self.step}{took}", flush=True)

    def _check_lora(self, ckpt: Path, meta: dict[str, Any]) -> None:
        """Adapters resume only on the base they were trained on, with the same adapter settings."""
        from bigtrain.model.lora import LoraConfig

        saved, here = LoraConfig.from_dict(meta["config"].get("lora") or {}, prefix="lora."), self.job.lora
        same = (saved.rank, saved.alpha, saved.dropout, saved.paths()) == (here.rank, here.alpha, here.dropout,
                                                                           here.paths())
        if not same:
            raise BigtrainError(f"{ckpt}: saved with lora {saved.to_dict()}, this run has lora "
                                f"{here.to_dict()}; use a new --run-dir or the checkpoint's settings")
        base = meta.get("lora_base")
        if self.lora_base is not None and (not base or base.get("sha256") != self.lora_base["sha256"]):
            was = f"{base.get('path')} (sha256 {str(base.get('sha256'))[:16]}…)" if base else "unknown weights"
            raise BigtrainError(f"{ckpt}: these adapters were trained on base {was}, but --init "
                                f"{self.lora_base['path']} has sha256 {self.lora_base['sha256'][:16]}…; resume with "
                                "the base the run started from")

    def _check_loaded_adapters(self, ckpt: Path) -> None:
        """DeepSpeed loads a LoRA checkpoint's files without strictness (they lack the frozen base): the adapters
        it loaded must equal the checkpoint's adapter.safetensors, or some were missing."""
        from safetensors.torch import load_file

        from bigtrain.model.lora import ADAPTER_FILE, gather_adapters

        got = gather_adapters(self.engine.module, self.job.model, self.job.lora, self.topo.tp_rank, self.topo.dp_rank)
        bad = [None]
        if self.info.rank == 0:
            want = load_file(str(ckpt / ADAPTER_FILE))  # verified with the checkpoint's other files
            bad = [next((k for k in want if not torch.equal(got[k], want[k])), None)]
        dist.broadcast_object_list(bad, src=0)
        if bad[0] is not None:
            raise BigtrainError(f"{ckpt}: adapter {bad[0]} loaded from DeepSpeed's files differs from "
                                f"{ADAPTER_FILE}; the checkpoint is inconsistent")

    def _check_layout(self, ckpt: Path, saved: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint whose files this engine cannot load; DeepSpeed would fail deep
        inside, or (ZeRO files missing) silently start the optimizer afresh."""
        here = self.layout()
        keys = ["tp", "pp", "zero_stage"]
        # Unpartitioned fp32 optimizer state loads at any DP; ZeRO and the bf16 optimizer partition over DP.
        if here["zero_stage"] > 0 or self.job.train.precision == "bf16" or saved.get("zero_stage"):
            keys.append("dp")
        if all(saved.get(k, here[k]) == here[k] for k in keys):
            return

        def show(lay: dict[str, Any]) -> str:
            return " ".join(f"{k}={lay.get(k)}" for k in keys)

        if self.lora_base is not None:  # bigtrain convert refuses LoRA checkpoints
            raise BigtrainError(f"{ckpt}: a LoRA run saved with layout {show(saved)} resumes in that layout only "
                                f"(this run is {show(here)})")
        raise BigtrainError(f"{ckpt}: saved with layout {show(saved)}, this run is {show(here)}: convert it with "
                            f"bigtrain convert --tp {here['tp']} --pp {here['pp']} --dp {here['dp']} "
                            f"--zero-stage {self.job.parallel.zero_stage}")

    # ------------------------------------------------------------------------------------------ steps
    def lr_at(self, step: int) -> float:
        t = self.job.train
        return t.lr * lr_factor(step, t.warmup_steps, t.max_steps, t.min_lr_ratio)

    def train_step(self) -> dict[str, Any]:
        lr = self.lr_at(self.step)
        self.module.set_lr(lr)
        self.loss_fn.step = self.step + 1
        loss = self.module.train_batch(self.loader)
        grad_norm = self.module.grad_norm()  # None: clipping is off
        skipped = not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm))
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": skipped}

    def evaluate(self) -> dict[str, Any]:
        """Held-out loss over ``train.eval_batches`` micro-batches per data-parallel rank (collective)."""
        loader = self.make_loader(self.job, self.topo.dp_rank, self.topo.dp, split="heldout")
        loss = self.module.eval_batches(loader, self.job.train.eval_batches)
        return {"split": "heldout", "loss": loss, "ppl": math.exp(min(loss, 50.0))}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"config": self.job.to_dict(), "loader": self.loader.state_dict(),
                "consumed_tokens": self.step * self.tokens_per_step,
                "consumed_samples": self.step * self.job.train.global_batch_size,
                "tokenizer": TOKENIZER_SUBDIR if self.tokenizer else None,
                # the EOS training used, which --eos-token may have chosen over the tokenizer files' own
                "tokenizer_eos": self.tokenizer.id_to_piece(self.tokenizer.eos_id)
                if self.tokenizer and self.tokenizer.eos_id >= 0 else None,
                "skipped_steps": self.skipped_steps,
                "layout": self.layout(),
                **({"lora_base": self.lora_base} if self.lora_base is not None else {})}

    def layout(self) -> dict[str, int]:
        """What a checkpoint's files depend on: the stage DeepSpeed ran, not the one configured."""
        return {"tp": self.topo.tp, "pp": self.topo.pp, "dp": self.topo.dp,
                "zero_stage": self.job.parallel.zero_stage_at(self.topo.dp, self.job.train.precision)}

    def save(self) -> Path:
        adapters = None
        if self.lora_base is not None:
            from bigtrain.model.lora import gather_adapters

            adapters = gather_adapters(self.engine.module, self.job.model, self.job.lora, self.topo.tp_rank,
                                       self.topo.dp_rank)
        ckpt = self.checkpoints.save(self.engine, self.step, self.checkpoint_meta(),
                                     tokenizer_files=self.tokenizer.carried_files() if self.tokenizer else None,
                                     adapters=adapters, include_frozen=self.lora_base is None)
        if self.info.rank == 0:
            print(f"saved checkpoint {ckpt}", flush=True)
        for cb in self.callbacks:
            cb.on_checkpoint(self, ckpt)
        return ckpt

    def step_sample_ids(self, step: int) -> list[str]:
        """Names of the global samples optimizer step ``step`` (1-based) trained on."""
        gbs = self.job.train.global_batch_size
        return [self.loader.sample_id(i) for i in range((step - 1) * gbs, step * gbs)]

    def emit(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(self, record)

    # ------------------------------------------------------------------------------------------- loop
    def _install_signal_handlers(self) -> None:
        """SIGTERM / SIGUSR1 (preemption, `scancel`, SLURM's --signal) ask for a save and a clean exit
        at the end of the current step; every rank agrees on the step through one all-reduce."""
        note = f"rank {self.info.rank} on {socket.gethostname()} got signal {{}}\n"

        def handler(signum, frame):
            if not self._requested:
                # One line per rank that got it (shows a signal reached every rank, on every node); a raw
                # write, as the handler may run while print() is inside the same stream.
                os.write(1, note.format(signum).encode())
            # Its own field: the handler runs between any two bytecodes, so writing the agreed flag here could be
            # undone by _stop_requested storing the all-reduce it started before the signal (a lost preemption).
            self._requested = signum

        if threading.current_thread() is not threading.main_thread():
            # Python takes signals in the main thread only (Ray Train runs the loop in another one): the
            # launcher then passes the request on through stop_file.
            if self.info.rank == 0:
                how = f"the launcher's stop file {self.stop_file}" if self.stop_file else "nothing (no stop file)"
                print(f"note: training runs outside the main thread, so SIGTERM / SIGUSR1 handlers cannot be "
                      f"installed; a stop request comes through {how}", flush=True)
            return
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        """Collective: True once any rank was asked to stop; all ranks then hold the same ``stop_signal``."""
        if not self._requested and self.stop_file is not None and self.info.rank == 0:
            try:  # the file holds the signal number the launcher got
                self._requested = int(self.stop_file.read_text().strip() or signal.SIGTERM)
            except FileNotFoundError:
                pass
            except ValueError:
                self._requested = signal.SIGTERM
        flag = torch.tensor([float(max(self._requested, self.stop_signal))], device=self.info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_signal = int(flag.item())
        return bool(self.stop_signal)

    def fit(self) -> dict[str, Any]:
        t = self.job.train
        self.stop_signal = self._requested = 0
        self.stop_reason = None
        if self.info.rank == 0:
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)  # a record of an earlier attempt
            (self.run_dir / HELD_FILE).unlink(missing_ok=True)
        for cb in self.callbacks:
            cb.on_train_start(self)
        last: dict[str, Any] = {}
        streak = 0
        hold_at = int(os.environ.get(HOLD_ENV) or 0)
        self._install_signal_handlers()
        while self.step < self.end_step:
            t0 = time.perf_counter()
            out = self.train_step()
            dt = time.perf_counter() - t0
            self.step += 1
            tps = self.tokens_per_step / dt
            if out["skipped"]:
                streak += 1
                self.skipped_steps += 1
            else:
                streak = 0
            last = {"step": self.step, **out, "skipped_steps": self.skipped_steps,
                    "tokens": self.step * self.tokens_per_step, "tokens_per_s": tps, "step_time_s": dt}
            if self.peak:
                last["mfu"] = tps * self.flops_per_token / (self.peak * self.info.world_size)
            if self.step % t.log_interval == 0 or self.step == t.max_steps:
                if self.info.rank == 0:
                    last["samples"] = self._samples_digest(self.step)
                self.emit(last)
            for cb in self.callbacks:
                cb.on_step_end(self, last)
            if streak >= t.max_nonfinite_steps:
                # Skipped steps changed nothing, so the weights now are those of the last good step.
                self.stop_reason = (f"stopped after {streak} consecutive steps with a non-finite loss or gradient "
                                    f"norm (steps {self.step - streak + 1}-{self.step}); the checkpoint at step "
                                    f"{self.step} holds the last good weights")
                break
            if self.step == hold_at:
                self._hold()
            if self._stop_requested():
                if self.info.rank == 0:
                    print(f"received signal {self.stop_signal}: saving at step {self.step} and stopping", flush=True)
                break
        for cb in self.callbacks:  # Checkpointing's last save comes before the writers' ends
            cb.on_train_end(self)
        if self.stop_signal and self.info.rank == 0:
            self._record_stop()
        return last

    def _hold(self) -> None:
        """The test-only hold (HOLD_ENV): every rank polls the collective stop flag, so all leave together."""
        if self.info.rank == 0:
            atomic_write_text(self.run_dir / HELD_FILE, f"{self.step}\n")
        # A poll count, not a clock: every rank must make the same number of collective calls.
        for _ in range(int(HOLD_TIMEOUT_S / 0.05)):
            if self._stop_requested():
                return
            time.sleep(0.05)

    def _samples_digest(self, step: int) -> str:
        """A short hash of the ids of the step's samples: equal digests, equal data (resume checks)."""
        h = hashlib.sha1()
        for sid in self.step_sample_ids(step):
            h.update(sid.encode() + b"\n")
        return h.hexdigest()[:16]

    def _record_stop(self) -> None:
        """RUN/STOPPED_FILE: this attempt saved at a signal and stopped early. A batch script cannot tell that
        from an exit status: srun reports 143 as well for ranks it terminated after another one died."""
        env = os.environ
        atomic_write_text(self.run_dir / STOPPED_FILE,
                          f"job={env.get('SLURM_JOB_ID', '')} attempt={env.get('SLURM_RESTART_COUNT', '0')} "
                          f"step={self.step} signal={self.stop_signal}\n")

    def close(self) -> None:
        from bigtrain.parallel.topology import teardown

        teardown()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
