"""Bad inputs to convert / import-hf / export-hf: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bigtrain.config.job import JobConfig
from bigtrain.convert import layout as L
from tests.helpers import bigtrain

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def one_line_error(proc, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"bigtrain: error: {message}"


def fake_tp2_pp2_checkpoint(path):
    job = JobConfig.from_dict({"model": {"n_layers": 2}, "parallel": {"tp": 2, "pp": 2}})
    path.mkdir()
    meta = {"config": job.to_dict(), "step": 10, "loader": {"consumed_samples": 80},
            "layout": {"tp": 2, "pp": 2, "dp": 1, "zero_stage": 1}}
    (path / "bigtrain.json").write_text(json.dumps(meta))
    from bigtrain.convert.checkpoint_io import expected_files

    for name in expected_files(meta, job.model):
        (path / name).write_bytes(b"")


def test_checkpoint_missing_a_file(tmp_path):
    ckpt = tmp_path / "step_00000010"
    fake_tp2_pp2_checkpoint(ckpt)
    (ckpt / "layer_02-model_01-model_states.pt").unlink()
    proc = bigtrain("convert", "--input", str(ckpt), "--output", str(tmp_path / "out"), "--to", "consolidated",
                    check=False)
    one_line_error(proc, f"{ckpt}: layer_02-model_01-model_states.pt is missing "
                         "(expected for layout tp=2 pp=2 dp=1 zero_stage=1)")
    assert not (tmp_path / "out").exists()
    proc = bigtrain("export-hf", "--input", str(ckpt), "--output", str(tmp_path / "hf"), check=False)
    one_line_error(proc, f"{ckpt}: layer_02-model_01-model_states.pt is missing "
                         "(expected for layout tp=2 pp=2 dp=1 zero_stage=1)")
    proc = bigtrain("generate", "--checkpoint", str(ckpt), "--prompt", "hi", check=False)
    one_line_error(proc, f"{ckpt}: layer_02-model_01-model_states.pt is missing "
                         "(expected for layout tp=2 pp=2 dp=1 zero_stage=1)")


def test_checkpoint_dir_without_metadata(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = bigtrain("convert", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--tp", "1",
                    check=False)
    one_line_error(proc, f"{tmp_path / 'empty'}: no complete checkpoint here "
                         "(expected bigtrain.json or checkpoints/step_*/)")


def test_non_llama_hf_config(tmp_path):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                "n_embd": 64}))
    proc = bigtrain("import-hf", "--input", str(hf), "--output", str(tmp_path / "ckpt"), check=False)
    one_line_error(proc, f"{hf / 'config.json'}: model_type 'gpt2' is not supported "
                         "(expected one of 'llama', 'mistral', 'qwen2', 'qwen3')")
    assert not (tmp_path / "ckpt").exists()


def test_tokenizer_does_not_match_vocabulary(tmp_path, corpus_tokenizer_dir):
    tok = corpus_tokenizer_dir  # 512 pieces
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(LLAMA))  # vocab_size 256 < 512 tokenizer pieces
    shutil.copy(tok / "tokenizer.model", hf / "tokenizer.model")
    proc = bigtrain("import-hf", "--input", str(hf), "--output", str(tmp_path / "ckpt"), check=False)
    one_line_error(proc, f"{hf}: tokenizer has 512 tokens but config.json vocab_size=256")
    assert not (tmp_path / "ckpt").exists()


def test_layout_split_and_merge_round_trip():
    from bigtrain.model.config import ModelConfig

    cfg = ModelConfig(n_layers=3, d_model=8, n_heads=2, ffn_hidden=8, vocab_size=8)
    full = torch.arange(8 * 8, dtype=torch.float32).view(8, 8)
    for name, dim in (("3.self_attn.q_proj.weight", 0), ("3.self_attn.o_proj.weight", 1),
                      ("3.mlp.down_proj.weight", 1), ("0.embed_tokens.weight", 0), ("5.lm_head.weight", 0)):
        assert L.tp_split_dim(name, cfg) == dim
        parts = [L.shard(full, name, 2, r, cfg) for r in range(2)]
        assert parts[0].shape[dim] == full.shape[dim] // 2
        assert torch.equal(L.merge(parts, name, cfg), full)
    assert L.tp_split_dim("1.input_layernorm.weight", cfg) is None
    assert torch.equal(L.shard(full[0], "4.norm.weight", 2, 1, cfg), full[0])


def test_unlisted_tensor_is_an_error_not_replicated():
    from bigtrain.errors import BigtrainError
    from bigtrain.model.config import ModelConfig

    llama, qwen2 = ModelConfig(n_layers=2), ModelConfig(n_layers=2, family="qwen2")
    assert L.tp_split_dim("1.self_attn.q_proj.bias", qwen2) == 0
    for name in ("1.self_attn.q_proj.bias", "1.mlp.extra.weight", "7.norm.weight"):
        with pytest.raises(BigtrainError, match="is not in the llama family's table"):
            L.shard(torch.zeros(4), name, 2, 0, llama)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_name_map_covers_every_tensor(tied):
    from bigtrain.model.config import ModelConfig

    cfg = ModelConfig(n_layers=2, tie_embeddings=tied)
    names = L.to_hf_names(cfg)
    assert set(names) == set(L.expected_shapes(cfg))
    assert ("lm_head.weight" in names.values()) is (not tied)


def hf_dir_from_table(path, hf: dict, drop: str | None = None, add: str | None = None):
    """An HF model directory: ``hf`` as config.json and zero tensors named and shaped by the family's table."""
    from safetensors.torch import save_file

    from bigtrain.convert.hf import model_config_from_hf
    from bigtrain.model.families import tensor_table

    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf))
    cfg = model_config_from_hf(hf, "test")
    tensors = {row.hf_name: torch.zeros(row.shape) for row in tensor_table(cfg).values() if row.hf_name != drop}
    if add:
        tensors[add] = torch.zeros(4)
    save_file(tensors, str(path / "model.safetensors"))
    return path


QWEN2 = {**LLAMA, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False}


@pytest.mark.parametrize("case", ["rope", "missing_bias", "unknown_tensor", "sliding"])
def test_import_refuses_in_one_line(tmp_path, case):
    out = tmp_path / "ckpt"
    if case == "rope":
        hf = {**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text(json.dumps(hf))
        want = f"{tmp_path / 'hf' / 'config.json'}: rope type 'yarn' is not supported for family llama " \
               "(supported: default, linear, llama3)"
    elif case == "missing_bias":
        hf_dir_from_table(tmp_path / "hf", QWEN2, drop="model.layers.1.self_attn.k_proj.bias")
        want = f"{tmp_path / 'hf'}: tensor model.layers.1.self_attn.k_proj.bias is missing " \
               "(the qwen2 family's table lists it)"
    elif case == "unknown_tensor":
        # a Llama config with q/k/v biases in its weights (attention_bias left out of config.json)
        hf_dir_from_table(tmp_path / "hf", LLAMA, add="model.layers.0.self_attn.q_proj.bias")
        want = f"{tmp_path / 'hf'}: tensor model.layers.0.self_attn.q_proj.bias is not in the llama family's " \
               "table (1 unknown tensor(s)); refusing to drop it"
    else:
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**QWEN2, "use_sliding_window": True}))
        want = f"{tmp_path / 'hf' / 'config.json'}: use_sliding_window=true is not supported for qwen2 " \
               "(expected false, as in every released Qwen2/2.5 model)"
    proc = bigtrain("import-hf", "--input", str(tmp_path / "hf"), "--output", str(out), check=False)
    one_line_error(proc, want)
    assert not out.exists()
