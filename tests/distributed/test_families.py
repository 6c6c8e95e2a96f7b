"""Model families against transformers' own classes: import-hf → TP=2 × PP=2 → export-hf, and one training step.

Each model is a tiny random one made by transformers itself. Sequences are longer than the rope scaling's
original context and than Mistral's sliding window, so both are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY, bigtrain, metrics

VOCAB, SEQ = 256, 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.1)


def make_hf(kind: str, path: Path):
    """A random transformers model of ``kind``, saved to ``path``; returns it in eval mode."""
    import transformers as T

    torch.manual_seed({"llama3": 1, "mistral": 2, "qwen2": 3}[kind])
    if kind == "llama3":  # Llama 3.1-style rope scaling from a 16-token original context; tied; head_dim ≠ d/h
        conf = T.LlamaConfig(**COMMON, head_dim=24, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = T.LlamaForCausalLM(conf)
    elif kind == "mistral":  # a 12-token window: most of a 96-token sequence is outside it
        model = T.MistralForCausalLM(T.MistralConfig(**COMMON, sliding_window=12, tie_word_embeddings=False))
    else:  # Qwen2: q/k/v biases (random, so a dropped bias shows), tied, large rope_theta
        model = T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, tie_word_embeddings=True,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.5)
    model.save_pretrained(str(path))
    return model.eval()


def hf_class(kind: str):
    import transformers as T

    return {"llama3": T.LlamaForCausalLM, "mistral": T.MistralForCausalLM, "qwen2": T.Qwen2ForCausalLM}[kind]


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return getattr(out, "logits", out).float()


@pytest.mark.parametrize("kind", ["llama3", "mistral", "qwen2"])
def test_import_tp2pp2_export_matches_transformers(tmp_path, kind):
    """In-process import_hf / export_hf (the CLI adds only its argument parsing): the TP2 × PP2 checkpoint is
    written by its own 4-process worker world all the same."""
    from bigtrain.convert.api import convert
    from bigtrain.convert.checkpoint_io import read_weights
    from bigtrain.convert.export import export_hf
    from bigtrain.convert.hf import import_hf
    from bigtrain.generate.inference import build_model
    from bigtrain.generate.sampling import generate
    from bigtrain.model.config import ModelConfig

    orig, ckpt, out = tmp_path / "orig", tmp_path / "ckpt", tmp_path / "export"
    model = make_hf(kind, orig)
    import_hf(orig, ckpt, tp=2, pp=2)
    meta = json.loads((ckpt / "bigtrain.json").read_text())
    assert meta["layout"]["tp"] == 2 and meta["layout"]["pp"] == 2
    assert (ckpt / "layer_01-model_01-model_states.pt").is_file()  # really a TP2 PP2 DeepSpeed checkpoint
    assert meta["config"]["model"]["family"] == {"llama3": "llama"}.get(kind, kind)
    src = ckpt
    if kind == "qwen2":  # a tied model through consolidation too
        src = tmp_path / "consolidated"
        convert(ckpt, src, to="consolidated")
    assert export_hf(src, out)["max_logit_diff"] <= 1e-4
    assert json.loads((out / "config.json").read_text())["model_type"] == {"llama3": "llama"}.get(kind, kind)

    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    want = logits(model, tokens)
    exported = hf_class(kind).from_pretrained(str(out), dtype=torch.float32).eval()
    assert (logits(exported, tokens) - want).abs().max().item() <= 1e-4
    # bigtrain's own forward, from the TP2 × PP2 checkpoint, on the long sequence
    weights, meta, _ = read_weights(ckpt)
    ours = build_model(ModelConfig.from_dict(meta["config"]["model"]), weights)
    assert (logits(ours, tokens) - want).abs().max().item() <= 1e-4
    if kind == "mistral":  # greedy decoding with a KV cache, well past the window, equals transformers'
        prompt = tokens[0, :8]
        theirs = exported.generate(prompt[None], max_new_tokens=24, do_sample=False)[0, 8:].tolist()
        assert generate(ours, prompt.tolist(), max_new_tokens=24, eos_id=exported.config.eos_token_id) == theirs


def test_qwen2_one_step_tp2_equals_transformers(tmp_path):
    """Same loss and same updated weights (biases included) as transformers' model under torch's AdamW."""
    orig, ckpt, run, out = (tmp_path / n for n in ("orig", "ckpt", "run", "export"))
    model = make_hf("qwen2", orig)
    bigtrain("import-hf", "--input", str(orig), "--output", str(ckpt), "--to", "consolidated")
    window = np.random.default_rng(0).integers(0, VOCAB, size=SEQ + 1).astype(np.int64)
    np.save(tmp_path / "tokens.npy", window)  # exactly one window: the batch is known whatever the order
    # eps well above the float noise of near-zero gradients (k biases under rotary have them): Adam's first
    # step is lr·g/(|g|+eps), which turns a 1e-10 error in a 1e-9 gradient into an lr-sized one when eps ≪ |g|.
    lr, wd, clip, eps = 1e-2, 0.1, 1.0, 1e-6
    bigtrain("train", TINY, "--run-dir", str(run), "--init", str(ckpt), f"data.path={tmp_path / 'tokens.npy'}",
             f"model.seq_len={SEQ}", "parallel.tp=2", "train.max_steps=1", "train.micro_batch_size=1",
             "train.global_batch_size=1", f"train.lr={lr}", "train.warmup_steps=0", f"train.weight_decay={wd}",
             f"train.grad_clip={clip}", f"train.eps={eps}", "train.log_interval=1", "checkpoint.interval=1", nproc=2)
    ours_loss = metrics(run)[0]["loss"]
    bigtrain("export-hf", "--input", str(run), "--output", str(out))

    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=eps)
    x = torch.from_numpy(window)
    loss = torch.nn.functional.cross_entropy(model(x[None, :-1]).logits[0].float(), x[1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    assert ours_loss == pytest.approx(loss.item(), rel=1e-4)

    from safetensors.torch import load_file

    trained = {}
    for f in out.glob("*.safetensors"):
        trained.update(load_file(str(f)))
    before = dict(hf_class("qwen2").from_pretrained(str(orig)).named_parameters())
    moved = 0
    for name, p in model.named_parameters():
        rel = ((trained[name] - p.detach()).norm() / p.detach().norm()).item()
        assert rel <= 1e-4, (name, rel)
        moved += int(not torch.equal(before[name].detach(), p.detach()))
    assert trained["model.layers.0.self_attn.q_proj.bias"].abs().sum() > 0
    assert moved == len(before)  # every tensor, biases included, was trained

    # --dtype bf16: the same weights rounded to bf16 (checked against transformers' model of them by export-hf)
    bigtrain("export-hf", "--input", str(run), "--output", str(tmp_path / "bf16"), "--dtype", "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    half = {}
    for f in (tmp_path / "bf16").glob("*.safetensors"):
        half.update(load_file(str(f)))
    assert half.keys() == trained.keys()
    for name, t in half.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, trained[name].to(torch.bfloat16)), name
