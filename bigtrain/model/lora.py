"""LoRA: low-rank adapters on chosen projections of every block, the base weights frozen.

A targeted projection ``W`` (``[out, in]``) computes ``W x + (alpha / rank) · B A dropout(x)`` with ``A``
``[rank, in]`` and ``B`` ``[out, rank]``, as PEFT's ``LoraLayer`` does: ``A`` starts Kaiming-uniform, ``B`` at zero,
so training starts from the base model exactly. Adapter tensors are named ``<projection>.lora_A.weight`` /
``.lora_B.weight`` beside the projection's own weight (PEFT's names under ``base_model.model.``).

Tensor parallelism: the factor on the split side of the projection is split the same way, the other one is
replicated, so no rank ever holds a full ``[out, in]`` product:
* column-parallel (q, k, v, gate, up; ``W`` split over ``out``): ``A`` replicated, ``B`` split over ``out``. The
  replicated ``A x`` enters the tensor-parallel region (identity forward, all-reduce backward), which sums the
  partial gradients of ``A`` over the ranks' output slices.
* row-parallel (o, down; ``W`` split over ``in``): ``A`` split over ``in``, ``B`` replicated. The partial ``A x``
  is all-reduced (as the projection's own output is), then ``B`` runs on the full low-rank activation.

The table of adapter tensors (:func:`adapter_table`) is derived from the family's tensor table: the one place
that says their names, shapes, splits and Hugging Face (PEFT) names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError

if TYPE_CHECKING:
    import torch

    from bigtrain.model.config import ModelConfig
    from bigtrain.model.families import TensorSpec

# Short target names (the and LitGPT's) → the projection's path inside a block. PEFT's module names
# (q_proj, ..., down_proj) are accepted too.
TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_BY_MODULE = {path.rsplit(".", 1)[1]: short for short, path in TARGETS.items()}
ADAPTER_FILE = "adapter.safetensors"  # in a checkpoint: the full fp32 adapters under canonical names
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraConfig(Config):
    rank: int = 0
    """Adapter rank r; 0 trains the full model (no adapters)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank (PEFT's lora_alpha)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (PEFT's lora_dropout)."""
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    """Projections that get adapters: q, k, v, o, gate, up, down (or PEFT's names q_proj, ..., down_proj);
    the default is PEFT's for Llama models."""

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self, prefix: str = "lora.") -> None:
        if self.rank < 0:
            raise BigtrainError(f"{prefix}rank={self.rank} must be >= 0 (0: no adapters)")
        if self.alpha <= 0:
            raise BigtrainError(f"{prefix}alpha={self.alpha} must be positive")
        if not 0 <= self.dropout < 1:
            raise BigtrainError(f"{prefix}dropout={self.dropout} must be in [0, 1)")
        if not self.targets:
            raise BigtrainError(f"{prefix}targets is empty: name at least one of {', '.join(TARGETS)}")
        for t in self.targets:
            if t not in TARGETS and t not in _BY_MODULE:
                raise BigtrainError(f"{prefix}targets: unknown target {t!r} (expected some of "
                                    f"{', '.join(TARGETS)}, or PEFT's {', '.join(_BY_MODULE)})")
        if len(set(self.short_targets())) != len(self.targets):
            raise BigtrainError(f"{prefix}targets={self.targets} names a projection twice")

    def short_targets(self) -> list[str]:
        return [_BY_MODULE.get(t, t) for t in self.targets]

    def paths(self) -> list[str]:
        """Block-relative module paths of the targeted projections, in block order."""
        chosen = set(self.short_targets())
        return [path for short, path in TARGETS.items() if short in chosen]

    def peft_modules(self) -> list[str]:
        return [p.rsplit(".", 1)[1] for p in self.paths()]


def check_rank(lora: LoraConfig, cfg: "ModelConfig") -> None:
    """A rank above a targeted projection's smaller dimension adds nothing a full update would not (and PEFT
    refuses nothing, silently): refused in one line."""
    if not lora.enabled:
        return
    from bigtrain.model.families import tensor_table

    for row in tensor_table(cfg).values():
        path = _target_path(row.name, lora)
        if path is not None:
            out, inp = row.shape
            if lora.rank > min(out, inp):
                raise BigtrainError(f"lora.rank={lora.rank} is larger than {path.partition('.')[2]}'s dimension "
                                    f"(its weight is [{out}, {inp}]: rank at most {min(out, inp)})")


def _target_path(name: str, lora: LoraConfig) -> str | None:
    """``{i}.self_attn.q_proj`` for the weight ``{i}.self_attn.q_proj.weight`` of a targeted projection."""
    if not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    layer, _, path = module.partition(".")
    return module if layer.isdigit() and path in lora.paths() else None


def adapter_table(cfg: "ModelConfig", lora: LoraConfig) -> dict[str, "TensorSpec"]:
    """Canonical adapter name → row (full shape, TP split dimension, PEFT name, layer), in model order."""
    from bigtrain.model.families import TensorSpec, tensor_table

    rows: dict[str, TensorSpec] = {}
    if not lora.enabled:
        return rows
    r = lora.rank
    for row in tensor_table(cfg).values():
        module = _target_path(row.name, lora)
        if module is None:
            continue
        out, inp = row.shape
        hf_module = PEFT_PREFIX + row.hf_name[: -len(".weight")]
        # column-parallel (split dim 0): B split like W's rows; row-parallel (split dim 1): A split like W's columns
        a = TensorSpec(f"{module}.lora_A.weight", (r, inp), 1 if row.tp_dim == 1 else None,
                       f"{hf_module}.lora_A.weight", row.layers)
        b = TensorSpec(f"{module}.lora_B.weight", (out, r), 0 if row.tp_dim == 0 else None,
                       f"{hf_module}.lora_B.weight", row.layers)
        rows[a.name], rows[b.name] = a, b
    return rows


def adapter_params(cfg: "ModelConfig", lora: LoraConfig) -> int:
    return sum(row.numel for row in adapter_table(cfg, lora).values())


# ------------------------------------------------------------------------------------------------- modules
def _adapter_generator(seed: int, name: str) -> "torch.Generator":
    import hashlib

    import torch

    # Seeded by the adapter's canonical name: every layout (TP, PP) starts from the same full A.
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(digest & (2**63 - 1))


def initial_adapter(row: "TensorSpec", seed: int) -> "torch.Tensor":
    """A: Kaiming-uniform with a = sqrt(5) over its input dimension (nn.Linear's and PEFT's default); B: zeros."""
    import torch

    if row.name.endswith("lora_B.weight"):
        return torch.zeros(row.shape)
    fan_in = row.shape[1]
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / 6) · sqrt(3 / fan_in)
    return torch.empty(row.shape).uniform_(-bound, bound, generator=_adapter_generator(seed, row.name))


class _Adapter:
    """The forward hook that adds the low-rank update to a megatron-core parallel linear's output. The factors are
    ``nn.Linear`` submodules called here, so ZeRO-3 gathers their partitioned weights as for any module."""

    def __init__(self, scale: float, dropout: float, row_parallel: bool, tp: int, tp_rank: int):
        self.scale = scale
        self.dropout = dropout
        self.row_parallel = row_parallel
        self.tp, self.tp_rank = tp, tp_rank

    def _drop(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        # One mask over the full input, drawn alike on every tensor-parallel rank (their generators move in step)
        # and sliced for a row-parallel rank's columns: the mask one process would draw, never one pattern
        # repeated over the slices.
        full = x.shape[-1] * (self.tp if self.row_parallel else 1)
        keep = torch.empty(*x.shape[:-1], full, device=x.device).bernoulli_(1 - self.dropout)
        if self.row_parallel and self.tp > 1:
            keep = keep.chunk(self.tp, dim=-1)[self.tp_rank]
        return x * keep.to(x.dtype) / (1 - self.dropout)

    def __call__(self, linear, inputs: tuple[Any, ...], output):
        from megatron.core import tensor_parallel

        x = inputs[0]
        if self.dropout and linear.training:
            x = self._drop(x)
        a = linear.lora_A(x.to(linear.lora_A.weight.dtype))
        if self.row_parallel:
            a = tensor_parallel.reduce_from_tensor_model_parallel_region(a)
        else:
            a = tensor_parallel.copy_to_tensor_model_parallel_region(a)
        delta = linear.lora_B(a) * self.scale
        out, bias = output
        return out + delta.to(out.dtype), bias


def apply_lora(module, cfg: "ModelConfig", lora: LoraConfig, seed: int, tp: int, tp_rank: int) -> list[str]:
    """Freeze every parameter of ``module`` (a plain model or a pipeline stage) and give each targeted
    projection its adapter factors (this rank's slices of the full initial ones). Returns the adapters' names."""
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes
    from torch import nn

    from bigtrain.convert import layout as L

    for p in module.parameters():
        p.requires_grad_(False)
    table = adapter_table(cfg, lora)
    added = []
    for name, linear in list(module.named_modules()):
        a_row = table.get(f"{name}.lora_A.weight")
        if a_row is None:
            continue
        b_row = table[f"{name}.lora_B.weight"]
        dtype = linear.weight.dtype
        for attr, row in (("lora_A", a_row), ("lora_B", b_row)):
            local = L.shard_row(initial_adapter(row, seed), row, tp, tp_rank)
            # made on the meta device: nn.Linear's own initialisation would draw from the default generator by the
            # local (layout-dependent) shape, and adapter dropout's masks come from that generator
            factor = nn.Linear(local.shape[1], local.shape[0], bias=False, device="meta")
            factor.weight = nn.Parameter(local.to(dtype).contiguous())
            if row.tp_dim is not None and tp > 1:
                set_tensor_model_parallel_attributes(factor.weight, True, row.tp_dim, 1)
            linear.add_module(attr, factor)  # the parameter is named <projection>.lora_A.weight (PEFT's name)
            added.append(row.name)
        linear.register_forward_hook(_Adapter(lora.scale, lora.dropout, a_row.tp_dim is not None, tp, tp_rank))
    # A stage may hold no targeted projection (no blocks): config validation already refused unknown targets.
    return added


def merge_adapters(base: dict[str, "torch.Tensor"], adapters: dict[str, "torch.Tensor"], lora: LoraConfig
                   ) -> dict[str, "torch.Tensor"]:
    """Full weights with ``W + scale · B A`` folded into each targeted projection (fp32)."""
    merged = dict(base)
    for name in base:
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        a = adapters.get(f"{module}.lora_A.weight") if module else None
        if a is not None:
            b = adapters[f"{module}.lora_B.weight"]
            merged[name] = (base[name].float() + lora.scale * (b.float() @ a.float())).contiguous()
    return merged


def gather_adapters(module, cfg: "ModelConfig", lora: LoraConfig, tp_rank: int, dp_rank: int
                    ) -> dict[str, "torch.Tensor"] | None:
    """The full fp32 adapters under canonical names on global rank 0 (None elsewhere). Collective.

    Each rank reads its slices' fp32 master values (DeepSpeed's optimizer copy under ZeRO or bf16, gathered over
    data parallelism; the parameter itself otherwise); the first data-parallel replica's ranks send theirs to
    rank 0, which joins the tensor-parallel slices by the table."""
    import torch.distributed as dist

    from bigtrain.convert import layout as L
    from bigtrain.parallel.zero import full_fp32

    table = adapter_table(cfg, lora)
    mine = {}
    for name, p in module.named_parameters():
        if name not in table:
            continue
        full = full_fp32(p)  # collective over DP under ZeRO: every rank calls it
        if dp_rank == 0:
            mine[name] = full.detach().float().cpu().clone()
    every: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((tp_rank, mine), every, dst=0)
    if dist.get_rank() != 0:
        return None
    parts: dict[str, dict[int, "torch.Tensor"]] = {}
    for rank, tensors in every:
        for name, t in tensors.items():
            parts.setdefault(name, {})[rank] = t
    missing = [n for n in table if n not in parts]
    if missing:
        raise BigtrainError(f"adapter {missing[0]} is on no rank (lora.targets={lora.targets})")
    return {name: L.merge_row([parts[name][r] for r in sorted(parts[name])], table[name]).contiguous()
            for name in table}
