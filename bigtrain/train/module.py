"""Train modules: the forward, backward and optimizer step of one training step over a DeepSpeed engine.

The trainer decides when (the loop, the LR, callbacks); a train module decides how a step runs: every
micro-batch through ``engine`` forward / backward / step (PP = 1), or DeepSpeed's pipeline schedule
(PP > 1), where :class:`~bigtrain.data.batch.Batch` fields travel as tuples between stages. Both return the
step's loss averaged over its micro-batches and data-parallel ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from bigtrain.data.loader import Loader


class TrainModule:
    def __init__(self, engine: Any, topo: Any, device: torch.device, grad_accumulation: int):
        self.engine, self.topo, self.device, self.gas = engine, topo, device, grad_accumulation

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def grad_norm(self) -> float | None:
        """The last step's global gradient norm (before clipping); None when clipping is off."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def train_batch(self, loader: Loader) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def eval_batches(self, loader: Loader, n: int) -> float:
        self.engine.eval()
        try:
            return self._eval(loader, n)
        finally:
            self.engine.train()

    def _eval(self, loader: Loader, n: int) -> float:
        raise NotImplementedError

    def _dp_mean(self, value: torch.Tensor) -> float:
        if self.topo.dp > 1:
            from megatron.core import parallel_state

            value = value.clone()
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
            value /= self.topo.dp
        return float(value)


class PlainTrainModule(TrainModule):
    """PP = 1: gradient accumulation over ``grad_accumulation`` micro-batches, then DeepSpeed's step."""

    def _loss(self, loader: Loader) -> torch.Tensor:
        b = loader.next_batch().to(self.device)
        return self.engine(b.input_ids, b.labels, **b.model_kwargs())

    def train_batch(self, loader: Loader) -> float:
        losses = []
        for _ in range(self.gas):
            loss = self._loss(loader)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        return self._dp_mean(torch.stack(losses).mean())

    def _eval(self, loader: Loader, n: int) -> float:
        return self._dp_mean(torch.stack([self._loss(loader).float() for _ in range(n)]).mean())


class _PipeFeed:
    """A loader as the iterator DeepSpeed's pipeline engine reads: ``(inputs, labels)`` per micro-batch."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def __iter__(self):
        return self

    def __next__(self):
        return self.loader.next_batch().pipe()


class PipelineTrainModule(TrainModule):
    """PP > 1: DeepSpeed's pipeline schedule runs the micro-batches; its loss is already averaged."""

    def train_batch(self, loader: Loader) -> float:
        return float(self.engine.train_batch(data_iter=_PipeFeed(loader)))

    def _eval(self, loader: Loader, n: int) -> float:
        return float(self.engine.eval_batch(data_iter=_PipeFeed(loader), num_micro_batches=n))


def train_module(engine: Any, topo: Any, device: torch.device, grad_accumulation: int) -> TrainModule:
    cls = PipelineTrainModule if topo.pp > 1 else PlainTrainModule
    return cls(engine, topo, device, grad_accumulation)


def compile_blocks(module: torch.nn.Module) -> int:
    """``torch.compile`` each transformer block in place (parameter names and checkpoints unchanged); the
    embedding, head and loss stay eager. Returns the number of blocks compiled."""
    from bigtrain.model.llama import Block

    blocks = [m for m in module.modules() if isinstance(m, Block)]
    if not blocks:
        from bigtrain.errors import BigtrainError

        raise BigtrainError(f"train.compile: no transformer block ({Block.__module__}.Block) found in this stage")
    for b in blocks:
        b.compile(dynamic=False)
    return len(blocks)
