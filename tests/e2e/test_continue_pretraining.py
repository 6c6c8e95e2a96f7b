"""Continue pretraining and fine-tune a Hugging Face model that brings its own tokenizer (the README's flow).

A tiny random Llama 3.2-like model made by transformers (tied embeddings, llama3 rope scaling), with a Llama 3-like
byte-level BPE tokenizer.json and chat template built by the `tokenizers` library: import-hf → preprocess with the imported tokenizer → train --init → eval → export-hf →
transformers generates; and generate --chat / finetune on {messages} with no tokenizer flag.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import REPO, TINY, bigtrain, metrics
from tests.hf_tokenizers import corpus_docs, make_byte_level_bpe

CARRIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    import transformers as T

    root = tmp_path_factory.mktemp("llama3")
    hf = root / "hf"
    tok = T.AutoTokenizer.from_pretrained(str(make_byte_level_bpe(root / "tok", corpus_docs(400))))
    vocab = -(-len(tok) // 64) * 64  # padded, as released models pad theirs
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(str(hf))
    tok.save_pretrained(str(hf))
    T.GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids(
        "<|eot_id|>")], do_sample=False).save_pretrained(str(hf))
    bigtrain("import-hf", "--input", str(hf), "--output", str(root / "ckpt"), "--to", "consolidated")
    return root


def test_import_preprocess_train_eval_export(imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = imported
    ckpt, data, run, out = root / "ckpt", root / "data", root / "run", root / "export"
    for name in CARRIED:  # the tokenizer travels with the weights, unchanged
        assert (ckpt / "tokenizer" / name).read_bytes() == (root / "hf" / name).read_bytes()
    bigtrain("preprocess", "--input", str(REPO / "data" / "python-docs.jsonl.gz"), "--tokenizer", str(ckpt),
             "--output", str(data), "--workers", "1", "--num-shards", "2", "--heldout-fraction", "0.05")
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf"
    bigtrain("train", TINY, "--run-dir", str(run), "--init", str(ckpt), f"data.path={data}", "train.max_steps=6",
             "train.warmup_steps=0", "train.lr=1e-3", "train.log_interval=1", "checkpoint.interval=6",
             "train.micro_batch_size=2", "train.global_batch_size=2")
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    proc = bigtrain("eval", "--checkpoint", str(run), "--data", str(data), "--split", "heldout")
    assert "bpb" in proc.stdout
    bigtrain("export-hf", "--input", str(run), "--output", str(out))
    for name in CARRIED:
        assert (out / name).read_bytes() == (root / "hf" / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("def main():", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_chat_generate_and_finetune_without_tokenizer_flag(imported):
    from bigtrain.finetune.config import SFTConfig
    from bigtrain.finetune.data import encode_example
    from bigtrain.tokenizer import load_tokenizer

    root = imported
    ckpt = root / "ckpt"
    proc = bigtrain("generate", "--checkpoint", str(ckpt), "--chat", "--prompt", "What is a list?",
                    "--max-new-tokens", "4")
    assert proc.stdout.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is a list?")
    examples = [{"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": f"{i} plus one?"},
                              {"role": "assistant", "content": f"{i + 1}"}]} for i in range(40)]
    (root / "chat.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    run = root / "sft"
    proc = bigtrain("finetune", str(REPO / "configs" / "sft-tiny.yaml"), "--init", str(ckpt), "--run-dir", str(run),
                    f"sft.path={root / 'chat.jsonl'}", "train.max_steps=4", "train.log_interval=1")
    assert "template auto" in proc.stdout and len(metrics(run)) == 4
    # What was trained on: the template's rendering, the assistant's reply and end-of-turn as the only targets.
    tok = load_tokenizer(ckpt)
    ids, train = encode_example(examples[3]["messages"], tok, SFTConfig(template="auto"))
    assert ids.tolist() == tok.encode(tok.apply_chat_template(examples[3]["messages"]))
    assert ids[train].tolist() == tok.encode("4<|eot_id|>")
