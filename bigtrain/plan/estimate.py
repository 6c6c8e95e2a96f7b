"""Per-rank memory and step-time estimates for a job in a layout (what ``bigtrain plan`` prints).

Model state follows the ZeRO paper (Rajbhandari et al., 2020, §3 and Fig. 1) with the bytes DeepSpeed
really allocates in bigtrain's set-up (checked on CPU by tests/distributed/test_plan_memory.py):

* parameters: ``p`` bytes each (bf16: 2, fp32: 4); ZeRO-3 keeps 1/DP of them, plus whole copies of
  the tensors of at most ``parallel.zero3_persistence_elements`` elements (DeepSpeed's persistence threshold,
  100k by default: only norms at scale);
* gradients: ``p`` bytes each; ZeRO-2/3 keep 1/DP;
* optimizer state: ``K`` bytes per parameter, 1/DP of them under ZeRO ≥ 1. ``K`` = 12 (fp32 master
  copy, Adam's m and v) in every case but fp32 without ZeRO, where the parameters are their own
  master copy and ``K`` = 8. (BF16 with pipeline parallelism and ZeRO-0 goes through DeepSpeed's
  BF16 optimizer, which also partitions the master copy and moments: counted as ZeRO-1.)

Parameters per rank are counted exactly from the architecture: tensor parallelism splits the
projections, embedding and head and replicates the norms; pipeline stage ``i`` holds its
``n_layers / pp`` blocks, stage 0 the embedding and the last stage the final norm and head (both
the embedding when tied). Activations and step time are estimates (see their functions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bigtrain.config.job import JobConfig
from bigtrain.train.flops import PEAK_BF16_FLOPS, flops_per_token, peak_flops

GiB = 1024**3

# Device memory in bytes (vendor datasheets); the longest key contained in --gpu wins.
GPU_MEMORY = {
    "H200": 141e9, "H100 NVL": 94e9, "H100 PCIe": 80e9, "H100 SXM": 80e9, "H100": 80e9, "GH200": 96e9,
    "A100 40GB": 40e9, "A100": 80e9, "A10G": 24e9, "L40S": 48e9, "L4": 24e9, "B200": 192e9,
}
DEFAULT_EFFICIENCY = 0.45
"""Assumed fraction of the peak FLOP/s the matrix multiplies reach (well-tuned dense bf16 training on
H100s reaches 0.4-0.55 of peak); override with --efficiency."""
ALLOCATOR_OVERHEAD = 0.10
"""Head-room for the CUDA caching allocator, NCCL buffers and the CUDA context when judging a fit."""


def _lookup(table: dict[str, float], name: str) -> float | None:
    for key in sorted(table, key=len, reverse=True):
        if key.lower() in name.lower():
            return table[key]
    return None


def stage_tensors(job: JobConfig, pp_rank: int, adapters: bool = False) -> list[int]:
    """Element counts of the parameter tensors one rank of pipeline stage ``pp_rank`` holds (before ZeRO-3),
    read from the family's tensor table (``adapters``: the LoRA adapter table): blocks are dealt evenly over
    stages, the embedding sits on the first stage and the final norm and head on the last (a tied embedding on
    both)."""
    from bigtrain.model.families import tensor_table
    from bigtrain.model.lora import adapter_table

    m, p = job.model, job.parallel
    per_stage = m.n_layers // p.pp
    table = adapter_table(m, job.lora) if adapters else tensor_table(m)

    def stage(layer: int) -> int:
        return 0 if layer == 0 else p.pp - 1 if layer > m.n_layers else (layer - 1) // per_stage

    return [row.numel // (p.tp if row.tp_dim is not None else 1) for row in table.values()
            if pp_rank in {stage(i) for i in row.layers}]


def stage_params(job: JobConfig, pp_rank: int) -> int:
    """Parameters one rank of pipeline stage ``pp_rank`` holds (before ZeRO-3 partitioning)."""
    return sum(stage_tensors(job, pp_rank))


def activation_bytes(job: JobConfig, pp_rank: int, micro_batches_in_flight: int) -> int:
    """Activations kept for the backward pass on one rank (estimate).

    Per block and token, the tensors autograd saves with SDPA's flash/memory-efficient kernels (no
    s×s score matrix): the two RMSNorm inputs and outputs (~6·h), q/k/v before and after the rotary
    embedding and the attention output and its re-layout (2·(H+2·KV)·hd + 2·H·hd, split by TP) and the
    SwiGLU's gate, up, SiLU and product (4·f, split by TP), at the training precision's width; plus the
    fp32 logits of the loss (logits, their fp32 copy and softmax, split by TP) on the last stage. With
    activation checkpointing a block keeps only its input, and one block's activations are rebuilt at
    a time. 1F1B pipelining keeps ``pp - stage`` micro-batches in flight on each stage.
    """
    m, p, t = job.model, job.parallel, job.train
    a = 2 if t.precision == "bf16" else 4
    tokens = t.micro_batch_size * m.seq_len
    d, hd, tp = m.d_model, m.head_size, p.tp
    per_block = (6 * d + (2 * (m.n_heads + 2 * m.kv_heads) * hd + 2 * m.n_heads * hd) // tp
                 + 4 * m.ffn_size // tp) * a * tokens
    blocks = m.n_layers // p.pp
    if t.activation_checkpointing:
        layers = blocks * d * a * tokens + per_block
    else:
        layers = blocks * per_block
    total = layers * micro_batches_in_flight
    if pp_rank == 0:
        total += d * a * tokens * micro_batches_in_flight  # embedding output
    if pp_rank == p.pp - 1:
        total += tokens * (m.vocab_size // tp) * (a + 8)  # logits + fp32 copy and softmax for the loss
    return total


@dataclass
class StagePlan:
    pp_rank: int
    params: int  # parameters this rank holds
    trainable: int  # of which the optimizer updates (all but a LoRA run's frozen base)
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int

    @property
    def model_state_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_state_bytes + self.activation_bytes


@dataclass
class Plan:
    world_size: int
    nodes: int
    gpus_per_node: int
    tp: int
    pp: int
    dp: int
    zero_stage: int
    precision: str
    gas: int
    gpu: str
    gpu_memory: float | None
    stages: list[StagePlan] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    tokens_per_step: int = 0
    flops_per_token: float = 0.0
    peak_flops: float | None = None
    efficiency: float = DEFAULT_EFFICIENCY
    bubble: float = 0.0
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, row in zip(self.stages, d["stages"]):
            row["model_state_bytes"] = s.model_state_bytes
            row["total_bytes"] = s.total_bytes
        return d


def model_state(job: JobConfig, tensors: list[int], dp: int, trainable: int | None = None) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes on one rank holding parameter tensors of these sizes, of which
    ``trainable`` elements (default: all) have gradients and optimizer state (a LoRA run's adapters)."""
    p, t = job.parallel, job.train
    n = sum(tensors)
    g = n if trainable is None else trainable
    width = 2 if t.precision == "bf16" else 4
    stage = p.zero_stage_at(dp, t.precision)
    if p.pp > 1 and t.precision == "bf16" and stage == 0:
        stage = 1  # DeepSpeed's BF16 optimizer partitions the master copy and moments over DP
    k = 8 if (t.precision == "fp32" and stage == 0) else 12
    if stage >= 3:
        persistent = sum(x for x in tensors if x <= p.zero3_persistence_elements) if dp > 1 else 0
        params = width * (n / dp + persistent)
    else:
        params = width * n
    grads = width * g / (dp if stage >= 2 else 1)
    optim = k * g / (dp if stage >= 1 else 1)
    return round(params), round(grads), round(optim)


def make_plan(job: JobConfig, nodes: int = 1, gpus_per_node: int = 8, gpu: str = "H100",
              efficiency: float = DEFAULT_EFFICIENCY) -> Plan:
    """Validate the layout (JobConfig's rules and check_world) and estimate it. Raises BigtrainError."""
    world = nodes * gpus_per_node
    dp = job.check_world(world)
    p, t, m = job.parallel, job.train, job.model
    gas = t.global_batch_size // (t.micro_batch_size * dp)
    plan = Plan(world_size=world, nodes=nodes, gpus_per_node=gpus_per_node, tp=p.tp, pp=p.pp, dp=dp,
                zero_stage=p.zero_stage_at(dp, t.precision), precision=t.precision, gas=gas, gpu=gpu,
                gpu_memory=_lookup(GPU_MEMORY, gpu), total_params=m.num_params(),
                tokens_per_step=t.global_batch_size * m.seq_len, flops_per_token=flops_per_token(m),
                peak_flops=peak_flops(gpu) or _lookup(PEAK_BF16_FLOPS, gpu), efficiency=efficiency)
    lora = job.lora
    for r in range(p.pp):
        adapters = stage_tensors(job, r, adapters=True)
        tensors = stage_tensors(job, r) + adapters
        n = sum(tensors)
        trainable = sum(adapters) if lora.enabled else n
        pb, gb, ob = model_state(job, tensors, dp, trainable)
        in_flight = min(p.pp - r, gas) if p.pp > 1 else 1
        plan.stages.append(StagePlan(r, n, trainable, pb, gb, ob, activation_bytes(job, r, in_flight)))
    if lora.enabled:
        from bigtrain.model.lora import adapter_params

        plan.trainable_params = adapter_params(m, lora)
        plan.total_params += plan.trainable_params
        plan.notes.append(f"LoRA rank {lora.rank} on {', '.join(lora.short_targets())}: "
                          f"{plan.trainable_params / 1e6:,.2f}M trainable parameters "
                          f"({plan.trainable_params / plan.total_params:.2%}); gradients and optimizer state for "
                          "them only; step time counts the frozen base's skipped weight gradients (4/6 of the work)")
    else:
        plan.trainable_params = plan.total_params
    if p.pp > 1:
        plan.bubble = (p.pp - 1) / (gas + p.pp - 1)
    if plan.peak_flops:
        # Model FLOPs per step over the world's peak at the assumed efficiency; recomputation adds a
        # forward pass (8/6 of the work) and the pipeline bubble idles (pp - 1)/(gas + pp - 1) of the time.
        work = plan.flops_per_token * plan.tokens_per_step
        recompute = 8 / 6 if t.activation_checkpointing else 1.0
        # Frozen weights need no weight gradient: of forward (2), input gradient (2) and weight gradient (2)
        # FLOPs per parameter and token, a LoRA step does the first two (the adapters' own are negligible).
        frozen = 4 / 6 if lora.enabled else 1.0
        plan.step_time_s = work * (recompute + frozen - 1) / (world * plan.peak_flops * efficiency) / (1 - plan.bubble)
        plan.tokens_per_s = plan.tokens_per_step / plan.step_time_s
        plan.mfu = plan.tokens_per_s * plan.flops_per_token / (world * plan.peak_flops)
    else:
        plan.notes.append(f"no bf16 peak FLOP/s known for --gpu {gpu!r} (known: {', '.join(PEAK_BF16_FLOPS)}): "
                          "no step time or MFU")
    if plan.zero_stage != p.zero_stage:
        plan.notes.append(f"parallel.zero_stage={p.zero_stage} runs as ZeRO-{plan.zero_stage}: data-parallel size 1 "
                          "has nothing to partition")
    if t.precision == "fp32":
        plan.notes.append("precision fp32: the peak used is the bf16 tensor-core peak, so the MFU shown is "
                          "what bf16 would need; fp32 runs far slower on GPUs")
    if plan.gpu_memory:
        worst = max(plan.stages, key=lambda s: s.total_bytes)
        need = worst.total_bytes * (1 + ALLOCATOR_OVERHEAD)
        if need > plan.gpu_memory:
            hint = "; try activation checkpointing, a higher ZeRO stage, more TP/PP or a smaller micro batch"
            plan.notes.append(f"DOES NOT FIT: stage {worst.pp_rank} needs ~{need / GiB:.1f} GiB with "
                              f"{ALLOCATOR_OVERHEAD:.0%} head-room, the {gpu} has {plan.gpu_memory / GiB:.1f} GiB{hint}")
        else:
            plan.notes.append(f"fits: largest rank needs ~{need / GiB:.1f} GiB of {plan.gpu_memory / GiB:.1f} GiB "
                              f"(with {ALLOCATOR_OVERHEAD:.0%} head-room)")
    return plan


def format_plan(plan: Plan, config_name: str = "") -> str:
    def gib(b: float) -> str:
        return f"{b / GiB:9.2f}"

    lines = [(f"plan {config_name}: {plan.nodes} node(s) × {plan.gpus_per_node} {plan.gpu} = {plan.world_size} "
              f"ranks; tp={plan.tp} pp={plan.pp} dp={plan.dp}; ZeRO-{plan.zero_stage}; {plan.precision}; "
              f"{plan.gas} micro-batch(es) per step per rank"),
             (f"model: {plan.total_params / 1e6:,.1f}M parameters ({plan.trainable_params / 1e6:,.2f}M trainable), "
              f"{plan.flops_per_token / 1e9:.2f} GFLOP/token, {plan.tokens_per_step:,} tokens/step"),
             "",
             (f"per-rank memory (GiB)  {'params':>9} {'grads':>9} {'optimizer':>9} {'states':>9} "
              f"{'activations':>11} {'total':>9}   parameters held")]
    for s in plan.stages:
        lines.append(f"  pipeline stage {s.pp_rank:<5} {gib(s.param_bytes)} {gib(s.grad_bytes)} "
                     f"{gib(s.optimizer_bytes)} {gib(s.model_state_bytes)} {s.activation_bytes / GiB:11.2f} "
                     f"{gib(s.total_bytes)}   {s.params / 1e6:,.1f}M")
    lines.append("")
    if plan.step_time_s is not None:
        bubble = f", pipeline bubble {plan.bubble:.0%}" if plan.pp > 1 else ""
        lines.append(f"estimated step time {plan.step_time_s:.3f} s, {plan.tokens_per_s:,.0f} tokens/s, "
                     f"MFU {plan.mfu:.1%} (assumed efficiency {plan.efficiency:.0%} of the {plan.peak_flops / 1e12:.0f} "
                     f"TFLOP/s bf16 peak{bubble})")
    lines.extend(plan.notes)
    lines.append("memory: parameters, gradients and optimizer state follow the ZeRO paper's formulas with "
                 "DeepSpeed's fp32 master copy; activations are an estimate")
    return "\n".join(lines)
