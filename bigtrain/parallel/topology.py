"""Process groups: megatron-core's parallel_state and DeepSpeed's topology, asserted to agree.

Rank order is tensor-parallel fastest, then data, then pipeline, on both sides: megatron-core with
``order="tp-cp-ep-dp-pp"`` and DeepSpeed's ``PipeModelDataParallelTopology`` (axes pipe, data, model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from megatron.core import ModelParallelConfig, parallel_state

from bigtrain.parallel.config import ParallelConfig
from bigtrain.parallel.dist import DistInfo


@dataclass
class Topology:
    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ds_topology: object  # deepspeed.runtime.pipe.topology.PipeModelDataParallelTopology

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


class MegatronMPU:
    """The ``mpu`` interface DeepSpeed expects, over megatron-core's parallel_state (used when PP = 1;
    a PipelineModule brings its own grid)."""

    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(parallel_state.get_tensor_model_parallel_src_rank)
    get_model_parallel_rank = get_tensor_model_parallel_rank
    get_model_parallel_world_size = get_tensor_model_parallel_world_size
    get_model_parallel_group = get_tensor_model_parallel_group
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(parallel_state.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(parallel_state.get_pipeline_model_parallel_group)


def setup_parallel(cfg: ParallelConfig, info: DistInfo) -> Topology:
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    dp = info.world_size // (cfg.tp * cfg.pp)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp,
                                             order="tp-cp-ep-dp-pp", create_gloo_process_groups=False)
    ds_topo = PipeModelDataParallelTopology(num_pp=cfg.pp, num_mp=cfg.tp, num_dp=dp)
    topo = Topology(rank=info.rank, world_size=info.world_size, tp=cfg.tp, pp=cfg.pp, dp=dp,
                    tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                    pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                    dp_rank=parallel_state.get_data_parallel_rank(), ds_topology=ds_topo)
    check_agreement(topo)
    return topo


def check_agreement(topo: Topology) -> None:
    """Fail at start-up, not as wrong numbers later, if the two libraries disagree on any group."""
    ds = topo.ds_topology
    coord = ds.get_coord(topo.rank)
    mine = (topo.tp_rank, topo.dp_rank, topo.pp_rank)
    theirs = (coord.model, coord.data, coord.pipe)
    if mine != theirs:
        raise RuntimeError(f"rank {topo.rank}: megatron-core (tp, dp, pp) = {mine} but DeepSpeed says {theirs}")
    for axis, group in (("model", parallel_state.get_tensor_model_parallel_group()),
                        ("data", parallel_state.get_data_parallel_group()),
                        ("pipe", parallel_state.get_pipeline_model_parallel_group())):
        megatron_ranks = sorted(dist.get_process_group_ranks(group))
        ds_ranks = next(sorted(r) for r in ds.get_axis_comm_lists(axis) if topo.rank in r) \
            if ds.get_dim(axis) > 1 else [topo.rank]
        if megatron_ranks != ds_ranks:
            raise RuntimeError(f"rank {topo.rank}: {axis} group is {megatron_ranks} in megatron-core but "
                               f"{ds_ranks} in DeepSpeed")


def model_parallel_config(cfg: ParallelConfig) -> ModelParallelConfig:
    """What megatron-core's layers need. Weights are always created whole on the CPU and split, so
    every layout (and every device) starts from the same numbers."""
    import torch

    return ModelParallelConfig(tensor_model_parallel_size=cfg.tp, use_cpu_initialization=True,
                               perform_initialization=True, params_dtype=torch.float32,
                               sequence_parallel=False, gradient_accumulation_fusion=False)


def teardown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
