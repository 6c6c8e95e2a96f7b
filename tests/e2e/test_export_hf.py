"""transformers model → import (TP2 PP2) → consolidate → export: same logits, same tokenizer, same greedy text.

A tiny random LlamaForCausalLM with grouped-query attention (4 query heads, 2 KV heads), carrying a tokenizer
exported from a bigtrain sentencepiece model. Tied embeddings and the other families go the same way in
tests/distributed/test_families.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import bigtrain, make_tiny_hf_llama

TEXTS = ["Hello world", "  def foo(x):\n    return x ** 2\n", "ünïcödé 你好 🎉 12345", "a  b\tc\n\nd  ",
         "Return the value of the named attribute of object."]


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_tokenizer_dir):
    return corpus_tokenizer_dir


def make_hf_model(path: Path, tokenizer_dir: Path) -> None:
    make_tiny_hf_llama(path, tokenizer_dir, seed=2, init_range=0.1)


def hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_import_tp2pp2_consolidate_export(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from bigtrain.tokenizer import load_tokenizer

    orig, ckpt, cons, out = (tmp_path / n for n in ("orig", "ckpt", "cons", "export"))
    make_hf_model(orig, tokenizer_dir)
    bigtrain("import-hf", "--input", str(orig), "--output", str(ckpt), "--tp", "2", "--pp", "2")
    assert (ckpt / "layer_01-model_01-model_states.pt").is_file()  # really a TP2 PP2 DeepSpeed checkpoint
    bigtrain("convert", "--input", str(ckpt), "--output", str(cons), "--to", "consolidated")
    assert (cons / "model.safetensors").is_file()
    proc = bigtrain("export-hf", "--input", str(cons), "--output", str(out))
    assert "logits match transformers" in proc.stdout
    assert (out / "model.safetensors.index.json").is_file() and (out / "generation_config.json").is_file()

    tokens = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    diff = (hf_logits(orig, tokens) - hf_logits(out, tokens)).abs().max().item()
    assert diff <= 1e-4, diff

    sp = load_tokenizer(tokenizer_dir)
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        ids = hf_tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text)
        assert hf_tok.decode(ids) == text

    # Greedy generation: bigtrain (KV cache, straight from the TP2 PP2 checkpoint) == transformers.
    from transformers import LlamaForCausalLM

    prompt = "def main():"
    proc = bigtrain("generate", "--checkpoint", str(ckpt), "--prompt", prompt, "--max-new-tokens", "24", "--ids")
    ours = [int(i) for i in proc.stdout.strip().splitlines()[-1].split()[1:]]
    model = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    assert ids[0, 0].item() == sp.bos_id
    theirs = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert ours == theirs and len(ours) > 0
