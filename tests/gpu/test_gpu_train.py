"""On a GPU: bf16 training with flash attention through SDPA logs MFU and learns; TP=2 when 2 GPUs."""


import pytest
import torch

from tests.helpers import TINY, bigtrain, env_for_tests, metrics

pytestmark = pytest.mark.gpu

GPU_ARGS = ["train.max_steps=60", "train.lr=1e-2", "train.precision=bf16", "train.log_interval=10",
            "checkpoint.interval=0", "model.d_model=256", "model.n_heads=8", "model.n_kv_heads=4",
            "model.ffn_hidden=768", "model.seq_len=256"]


def _gpu_env():
    env = env_for_tests()
    env.pop("DS_ACCELERATOR", None)
    return env


def test_bf16_training_reports_mfu(tmp_path):
    bigtrain("train", TINY, "--run-dir", str(tmp_path / "run"), *GPU_ARGS, env=_gpu_env())
    rows = metrics(tmp_path / "run")
    assert all(0 < r["mfu"] < 1 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tp2_matches_tp1_on_gpu(tmp_path):
    args = [a.replace("bf16", "fp32") for a in GPU_ARGS] + ["train.max_steps=10"]
    bigtrain("train", TINY, "--run-dir", str(tmp_path / "a"), *args, env=_gpu_env())
    bigtrain("train", TINY, "--run-dir", str(tmp_path / "b"), *args, "parallel.tp=2", nproc=2, env=_gpu_env())
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    # TF32 matmuls and NCCL reduction order: looser than the CPU's 1e-4.
    assert all(abs(x["loss"] - y["loss"]) / x["loss"] < 1e-3 for x, y in zip(a, b))


def test_document_masking_flex_matches_documents_one_by_one():
    """On CUDA the document path is FlexAttention (compiled, block mask made once per micro-batch): the packed
    loss and its gradients against the CPU path's reference, the documents run one by one."""
    import torch.nn.functional as F

    from bigtrain.data.batch import window_batch
    from bigtrain.generate.inference import build_model
    from bigtrain.model.attention import FlexPlan, document_plan
    from bigtrain.model.config import ModelConfig

    cfg = ModelConfig(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=256, vocab_size=256, seq_len=256,
                      init_std=0.1)
    model = build_model(cfg, seed=3).cuda()
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 256, (2, 257), generator=g).numpy()
    batch = window_batch(windows, [[40, 41, 170], [128]], reset_positions=True).to("cuda")
    assert isinstance(document_plan(batch.doc_ids, None), FlexPlan)
    packed = float(model(batch.input_ids, batch.labels, **batch.model_kwargs()))
    nats, count = 0.0, 0
    with torch.no_grad():
        for r in range(2):
            d = batch.doc_ids[r].tolist()
            cuts = [0] + [i for i in range(1, len(d)) if d[i] != d[i - 1]] + [len(d)]
            for a, e in zip(cuts, cuts[1:]):
                y = batch.labels[r, a:e]
                keep = y >= 0
                if keep.any():
                    logits = model(batch.input_ids[r, a:e][None])[0].float()
                    nats += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
                    count += int(keep.sum())
    # TF32 matmuls on GPU: looser than the CPU's 1e-5
    assert abs(packed - nats / count) < 1e-3 * (nats / count)
