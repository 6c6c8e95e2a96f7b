"""Callbacks: what happens around the training step.

On every rank (they run collectives): :class:`Checkpointing` (cadence, and the save at the end of a run
or a stop), :class:`Evaluation` (held-out loss every ``train.eval_interval`` steps). On rank 0 only:
:class:`SpikeDetection`, :class:`MetricsFile`, :class:`Console`, :class:`TensorBoard`, :class:`LossPlot`.
Launchers and fine-tuning methods add their own (e.g. Ray Train's checkpoint reports).
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from typing import Any

from bigtrain.io import atomic_write_bytes, atomic_write_text


class Callback:
    def on_train_start(self, trainer) -> None: ...
    def on_step_end(self, trainer, record: dict[str, Any]) -> None:
        """After optimizer step ``trainer.step`` (``record``: its loss, lr, grad norm, skipped, throughput)."""
    def on_log(self, trainer, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer, ckpt_dir: Path) -> None: ...
    def on_train_end(self, trainer) -> None: ...


class Checkpointing(Callback):
    """A checkpoint every ``interval`` steps and at the last step; at the end of the run (max_steps,
    stop_after, a signal, or a stop after non-finite steps) one more unless this step is already saved."""

    def __init__(self, interval: int):
        self.interval = interval

    def on_train_start(self, trainer) -> None:
        self.saved_at = trainer.step

    def on_step_end(self, trainer, record: dict[str, Any]) -> None:
        if (self.interval and trainer.step % self.interval == 0) or trainer.step == trainer.end_step:
            trainer.save()
            self.saved_at = trainer.step

    def on_train_end(self, trainer) -> None:
        if self.saved_at != trainer.step:
            trainer.save()
            self.saved_at = trainer.step


class Evaluation(Callback):
    """Held-out loss and perplexity every ``interval`` steps and at max_steps; with ``bits_per_byte`` (a
    tokenizer and preprocessed datasets whose every target counts) also bpb: the bytes of the evaluated
    windows are counted once per run."""

    def __init__(self, interval: int, bits_per_byte: bool = False):
        self.interval, self.bits_per_byte = interval, bits_per_byte
        self._counter = None
        self._bytes: dict[int, int] = {}

    def on_step_end(self, trainer, record: dict[str, Any]) -> None:
        if self.interval and (trainer.step % self.interval == 0 or trainer.step == trainer.job.train.max_steps):
            result = {"step": trainer.step, **trainer.evaluate()}
            if self.bits_per_byte:
                result.update(self._bpb(trainer, result["loss"]))
            trainer.emit(result)

    def _bpb(self, trainer, loss: float) -> dict[str, Any]:
        from bigtrain.data.build import build_source
        from bigtrain.eval.heldout import LN2, ByteCounter

        t = trainer.job.train
        n = t.eval_batches * t.micro_batch_size * trainer.topo.dp  # the evaluated windows: held-out [0, n)
        if n not in self._bytes:
            self._counter = self._counter or ByteCounter(trainer.tokenizer)
            source = build_source(trainer.job, split="heldout")
            self._bytes[n] = sum(self._counter.target_bytes(source.window(i)) for i in range(n))
        tokens = n * trainer.job.model.seq_len
        nbytes = self._bytes[n]
        return {"bpb": loss * tokens / (LN2 * nbytes) if nbytes else None, "tokens": tokens, "bytes": nbytes}


class SpikeDetection(Callback):
    """Warn, naming the step's sample ids, when a step's loss exceeds ``factor`` × the mean of the last 50
    finite steps (after 10 of them)."""

    def __init__(self, factor: float):
        self.factor = factor
        self.recent: deque[float] = deque(maxlen=50)

    def on_step_end(self, trainer, record: dict[str, Any]) -> None:
        if record["skipped"] or not self.factor:
            return
        loss = record["loss"]
        if len(self.recent) >= 10:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.factor * mean:
                ids = trainer.step_sample_ids(trainer.step)
                shown = ", ".join(ids[:16]) + (f", … ({len(ids)} in all)" if len(ids) > 16 else "")
                print(f"warning: loss spike at step {trainer.step}: {loss:.4f} > {self.factor} × running mean "
                      f"{mean:.4f}; samples: {shown}", flush=True)
        self.recent.append(loss)


class MetricsFile(Callback):
    """``RUN/metrics.jsonl``: one JSON object per logged step (and per evaluation, with ``split``).

    On resume, records after the resumed step (logged by the run that died after its last
    checkpoint) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def on_train_start(self, trainer) -> None:
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= trainer.start_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._f = self.path.open("a")

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        # Strict JSON: a non-finite loss of a skipped step is written as null.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def on_train_end(self, trainer) -> None:
        self._f.close()


class Console(Callback):
    def on_log(self, trainer, r: dict[str, Any]) -> None:
        if "split" in r:
            print(f"step {r['step']:>6} | {r['split']} loss {r['loss']:.4f} | ppl {r['ppl']:.2f}", flush=True)
            return
        parts = [f"step {r['step']:>6}/{trainer.job.train.max_steps}", f"loss {r['loss']:.4f}",
                 f"lr {r['lr']:.2e}", f"grad_norm {r['grad_norm'] if r['grad_norm'] is None else format(r['grad_norm'], '.3f')}",
                 f"{r['tokens_per_s']:,.0f} tok/s"]
        if "mfu" in r:
            parts.append(f"mfu {100 * r['mfu']:.1f}%")
        if r.get("skipped"):
            parts.append("SKIPPED")
        print(" | ".join(parts), flush=True)


class TensorBoard(Callback):
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "tensorboard"

    def on_train_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir), purge_step=trainer.start_step + 1)

    def on_log(self, trainer, r: dict[str, Any]) -> None:
        prefix = r.get("split", "train")
        for key, value in r.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, r["step"])

    def on_train_end(self, trainer) -> None:
        self.writer.close()


class LossPlot(Callback):
    """``RUN/loss.png`` from metrics.jsonl when the run ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "loss.png"

    def on_train_end(self, trainer) -> None:
        plot_loss_curve(self.run_dir / "metrics.jsonl", self.path)


def plot_loss_curve(metrics_path: Path, out_path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, held = [], []
    for line in Path(metrics_path).read_text().splitlines():
        r = json.loads(line)
        if r.get("loss") is not None:
            (held if r.get("split") else train).append((r["step"], r["loss"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train")
    if held:
        ax.plot(*zip(*held), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_path, buf.getvalue())
