"""`bigtrain plan`: layout validation, the ZeRO paper's model-state formulas, step time and MFU."""

import json

import pytest

from bigtrain.config.job import load_job_config
from bigtrain.errors import BigtrainError
from bigtrain.plan.estimate import make_plan, stage_params
from tests.helpers import REPO, bigtrain

CFG = str(REPO / "configs")


@pytest.mark.parametrize("stage,expect", [(0, 16), (1, 4 + 12 / 8), (2, 2 + 14 / 8), (3, 16 / 8)])
def test_zero_paper_formulas_bf16(stage, expect):
    # Rajbhandari et al. 2020, Fig. 1: (2 + 2 + K)Ψ, 2Ψ + 2Ψ + KΨ/Nd, 2Ψ + (2 + K)Ψ/Nd, (2 + 2 + K)Ψ/Nd.
    job = load_job_config(f"{CFG}/1b.yaml", [f"parallel.zero_stage={stage}"])
    plan = make_plan(job, 1, 8, "H100")
    s = plan.stages[0]
    assert s.params == job.model.num_params()
    assert s.model_state_bytes / s.params == pytest.approx(expect, rel=1e-3)  # ZeRO-3: whole norms


def test_tp_pp_split_parameters_exactly():
    job = load_job_config(f"{CFG}/1b.yaml", ["parallel.tp=2", "parallel.pp=2"])
    total = sum(stage_params(job, r) for r in range(2)) * 2
    d = job.model.d_model
    replicated = job.model.n_layers * 2 * d + d  # norms live whole on every TP rank
    assert total - replicated == job.model.num_params()


def test_step_time_and_mfu():
    job = load_job_config(f"{CFG}/1b.yaml", [])
    plan = make_plan(job, 1, 8, "H100", efficiency=0.5)
    assert plan.mfu == pytest.approx(0.5)
    assert plan.step_time_s == pytest.approx(plan.flops_per_token * 512 * 2048 / (8 * 989e12 * 0.5))
    ckpt = make_plan(load_job_config(f"{CFG}/1b.yaml", ["train.activation_checkpointing=true"]), 1, 8, "H100", 0.5)
    assert ckpt.mfu == pytest.approx(0.5 * 6 / 8)
    pp = make_plan(load_job_config(f"{CFG}/1b.yaml", ["parallel.pp=2"]), 1, 8, "H100", 0.5)
    assert pp.bubble == pytest.approx(1 / (pp.gas + 1))


def test_layout_errors_are_the_trainers():
    with pytest.raises(BigtrainError, match="not divisible"):
        make_plan(load_job_config(f"{CFG}/1b.yaml", []), 1, 3)
    with pytest.raises(BigtrainError, match="multiple of"):
        make_plan(load_job_config(f"{CFG}/7b.yaml", []), 1, 2)


def test_cli(tmp_path):
    out = bigtrain("plan", f"{CFG}/1b.yaml", "--nodes", "2", "--gpus-per-node", "8", "--gpu", "H200").stdout
    assert "16 ranks" in out and "optimizer" in out and "activations" in out and "MFU" in out
    assert "assumed efficiency 45%" in out and "fits" in out
    js = json.loads(bigtrain("plan", f"{CFG}/7b.yaml", "parallel.pp=2", "--json").stdout)
    assert js["dp"] == 1 and len(js["stages"]) == 2 and js["stages"][0]["activation_bytes"] > 0
    bad = bigtrain("plan", f"{CFG}/1b.yaml", "parallel.pp=2", "parallel.zero_stage=3", check=False)
    assert bad.returncode == 2 and "zero_stage=3 is not allowed" in bad.stderr
    assert "DOES NOT FIT" in bigtrain("plan", f"{CFG}/7b.yaml", "parallel.tp=1", "--gpus-per-node", "1",
                                      "train.global_batch_size=1", "--gpu", "L4").stdout


@pytest.mark.parametrize("precision,configured,ran", [("fp32", 1, 0), ("fp32", 3, 0), ("bf16", 3, 1), ("bf16", 0, 0)])
def test_one_replica_runs_the_stage_that_partitions_nothing(precision, configured, ran):
    from bigtrain.train.trainer import deepspeed_config

    job = load_job_config(f"{CFG}/tiny-cpu.yaml", [f"parallel.zero_stage={configured}", f"train.precision={precision}"])
    assert deepspeed_config(job, 1)["zero_optimization"]["stage"] == ran
    assert deepspeed_config(job, 2)["zero_optimization"]["stage"] == configured
    plan = make_plan(job, 1, 1, "H100")
    assert plan.zero_stage == ran
    assert any(f"runs as ZeRO-{ran}" in n for n in plan.notes) == (ran != configured)
    if precision == "fp32":  # no second fp32 copy: parameters, gradients and the two Adam moments
        s = plan.stages[0]
        assert s.model_state_bytes == 16 * s.params


def test_bucket_elements_sets_deepspeeds_buckets():
    from bigtrain.train.trainer import deepspeed_config

    job = load_job_config(f"{CFG}/tiny-cpu.yaml", [])
    assert set(deepspeed_config(job, 2)["zero_optimization"]) == {"stage"}  # DeepSpeed's defaults
    zero = deepspeed_config(load_job_config(f"{CFG}/tiny-cpu.yaml", ["parallel.bucket_elements=1000"]), 2)[
        "zero_optimization"]
    assert zero == {"stage": 1, "reduce_bucket_size": 1000, "allgather_bucket_size": 1000,
                    "stage3_prefetch_bucket_size": 1000}
    with pytest.raises(BigtrainError, match=r"parallel.bucket_elements=-1 must be 0"):
        load_job_config(f"{CFG}/tiny-cpu.yaml", ["parallel.bucket_elements=-1"])


def test_lora_plan_counts_adapters_alone_as_trainable():
    # 7b recipe (tp=4, dp=2 on 8 GPUs, ZeRO-1, bf16): rank 16 on every projection adds r·(in + out) per projection
    job = load_job_config(REPO / "configs" / "7b.yaml", ["lora.rank=16", "lora.targets=[q,k,v,o,gate,up,down]"])
    m, r = job.model, 16
    q, kv, d, f = m.n_heads * m.head_size, m.kv_heads * m.head_size, m.d_model, m.ffn_size
    per_layer = r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
    full = make_plan(load_job_config(REPO / "configs" / "7b.yaml"), nodes=1, gpus_per_node=8)
    lora = make_plan(job, nodes=1, gpus_per_node=8)
    assert lora.trainable_params == m.n_layers * per_layer
    assert lora.total_params == full.total_params + lora.trainable_params
    s, fs = lora.stages[0], full.stages[0]
    # one factor is split over TP, the other replicated: column-parallel r·(in + out/tp), row-parallel r·(in/tp + out)
    tp = job.parallel.tp
    assert s.trainable == m.n_layers * r * ((d + q // tp) + 2 * (d + kv // tp) + (q // tp + d) + 2 * (d + f // tp)
                                            + (f // tp + d))
    assert s.optimizer_bytes == round(12 * s.trainable / lora.dp)  # fp32 master + Adam moments, ZeRO-1 over DP
    assert s.grad_bytes == 2 * s.trainable  # bf16 gradients of the adapters only
    assert s.param_bytes == 2 * s.params and s.params == fs.params + s.trainable
    assert lora.step_time_s < full.step_time_s


@pytest.mark.parametrize("recipe,gpus,size", [("tiny-cpu.yaml", 1, None), ("125m.yaml", 8, 125e6),
                                              ("1b.yaml", 8, 1.1e9), ("7b.yaml", 8, 6.7e9)])
def test_every_recipe_loads_and_plans(recipe, gpus, size):
    """The pretraining recipes the README lists (sft-tiny.yaml is finetune's: tests/e2e/test_finetune_sft.py) are
    valid jobs, each model the size its name says, with a plan for the recipe's own layout."""
    job = load_job_config(f"{CFG}/{recipe}", [])
    if size:
        assert job.model.num_params() == pytest.approx(size, rel=0.1), job.model.num_params()
    plan = make_plan(job, 1, gpus, "H100")
    assert plan.stages and plan.step_time_s > 0
