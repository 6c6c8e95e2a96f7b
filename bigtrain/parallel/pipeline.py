"""Layer specs → a runnable module: plain (PP = 1) or a DeepSpeed PipelineModule (PP > 1).

Both name their parameters the same way (``<layer index>.<path>``, tied layers under
``tied_modules.<key>``), so checkpoints and converters see one layout of names.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bigtrain.data.batch import batch_inputs
from bigtrain.model.llama import Block, LayerSpec
from bigtrain.parallel.topology import Topology


class SequentialModel(nn.Module):
    """Runs the specs in order; ``forward(tokens, labels)`` returns the loss, or logits without labels.

    ``doc_ids`` / ``position_ids`` (a :class:`~bigtrain.data.batch.Batch`'s packed-document fields) ride along
    with the activation as the pipeline stages pass them (see ``bigtrain.model.llama.split_activation``)."""

    def __init__(self, specs: list[LayerSpec], loss_fn: Callable, activation_checkpointing: bool = False):
        super().__init__()
        self.loss_fn = loss_fn
        self.activation_checkpointing = activation_checkpointing
        self.tied_modules = nn.ModuleDict()
        self._calls: list[tuple[nn.Module, Callable | None]] = []
        for idx, spec in enumerate(specs):
            if spec.tie_key is not None:
                if spec.tie_key not in self.tied_modules:
                    self.tied_modules[spec.tie_key] = spec.build()
                module = self.tied_modules[spec.tie_key]
            else:
                module = spec.build()
                self.add_module(str(idx), module)
            self._calls.append((module, spec.forward_fn))

    def hidden_and_logits(self, tokens: torch.Tensor, kv_cache=None, doc_ids: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = batch_inputs(tokens, doc_ids, position_ids)
        for module, forward_fn in self._calls:
            if forward_fn is not None:
                x = forward_fn(module, x)
            elif isinstance(module, Block):
                if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(module, x, use_reentrant=False)
                else:
                    x = module(x, kv_cache)
            else:
                x = module(x)
        return x

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, kv_cache=None,
                doc_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.hidden_and_logits(tokens, kv_cache, doc_ids, position_ids)
        if labels is None:
            return logits
        return self.loss_fn(logits, labels)


def build_module(specs: list[LayerSpec], topo: Topology, loss_fn: Callable, activation_checkpointing: bool,
                 partition_method: str = "type:Block") -> nn.Module:
    if topo.pp == 1:
        return SequentialModel(specs, loss_fn, activation_checkpointing)
    from deepspeed.pipe import LayerSpec as DSLayerSpec
    from deepspeed.pipe import TiedLayerSpec

    ds_specs = []
    for spec in specs:
        if spec.tie_key is not None:
            ds_specs.append(TiedLayerSpec(spec.tie_key, spec.cls, forward_fn=spec.forward_fn,
                                          tied_weight_attr=["weight"], **spec.kwargs))
        else:
            ds_specs.append(DSLayerSpec(spec.cls, **spec.kwargs))
    return pipeline_module_class()(layers=ds_specs, loss_fn=loss_fn, topology=topo.ds_topology,
                                   partition_method=partition_method,
                                   activation_checkpoint_interval=1 if activation_checkpointing else 0,
                                   activation_checkpoint_func=partial(checkpoint, use_reentrant=False),
                                   checkpointable_layers=["Block"])


@cache
def pipeline_module_class() -> type:
    from deepspeed.pipe import PipelineModule

    class BigtrainPipelineModule(PipelineModule):
        """DeepSpeed's PipelineModule without frozen tied weights in the tied-gradient all-reduce: LoRA freezes
        the embedding shared by the first and last stages, which then has no gradient (DeepSpeed's bf16 path
        would read a ``_hp_grad`` it never made)."""

        def get_tied_weights_and_groups(self):
            return [(w, g) for w, g in super().get_tied_weights_and_groups() if w.requires_grad]

    return BigtrainPipelineModule
