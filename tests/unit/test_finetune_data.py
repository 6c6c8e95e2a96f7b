"""SFT data: prompt tokens carry no loss, packing keeps examples apart, the loader resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from bigtrain.data.batch import IGNORE_INDEX
from bigtrain.errors import BigtrainError
from bigtrain.finetune.config import SFTConfig
from bigtrain.finetune.data import SFTLoader, encode_all, encode_example, encode_prompt, read_jsonl
from tests.helpers import documents_one_by_one


@pytest.fixture(scope="module")
def tok(corpus_tokenizer):
    return corpus_tokenizer


def test_prompt_tokens_carry_no_loss(tok):
    cfg = SFTConfig(template="chatml")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add one: 1 2"},
            {"role": "assistant", "content": "2 3"}, {"role": "user", "content": "again: 5"},
            {"role": "assistant", "content": "6"}]
    ids, train = encode_example(msgs, tok, cfg)
    # every trainable token belongs to an assistant turn (its content, the suffix, EOS) and nothing else does
    reply1 = tok.encode("2 3<|im_end|>\n") + [tok.eos_id]
    reply2 = tok.encode("6<|im_end|>\n") + [tok.eos_id]
    assert ids[train].tolist() == reply1 + reply2
    prompt1 = encode_prompt(msgs[:2], tok, cfg)
    assert ids[:len(prompt1)].tolist() == prompt1 and not train[:len(prompt1)].any()
    enc = encode_all([msgs], tok, cfg, seq_len=512, where="t")
    x, y = enc.inputs[0], enc.labels[0]
    assert (y[~train[1:]] == IGNORE_INDEX).all() and (y[train[1:]] == ids[1:][train[1:]]).all()

    # the loss of the model equals the mean cross-entropy over response targets only
    from bigtrain.generate.inference import build_model
    from bigtrain.model.config import ModelConfig

    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, vocab_size=512, seq_len=512), seed=3)
    xt, yt = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    with torch.no_grad():
        loss = model(xt, yt)
        logits = model(xt)[0]
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(ids[1:]), reduction="none")
    assert torch.allclose(loss, ce[torch.from_numpy(train[1:])].mean(), atol=1e-6)
    # changing a prompt target's label value cannot matter: it is masked
    assert (yt[0, :len(prompt1) - 1] == IGNORE_INDEX).all()


def test_packed_rows_do_not_attend_across_examples(tok):
    from bigtrain.generate.inference import build_model
    from bigtrain.model.config import ModelConfig

    cfg = SFTConfig()
    exs = [[{"role": "user", "content": f"add one: {i} {i + 1}"}, {"role": "assistant", "content": f"{i + 1} {i + 2}"}]
           for i in range(6)]
    enc = encode_all(exs, tok, cfg, seq_len=64, where="t")
    loader = SFTLoader(enc, 64, 2, 0, 1, seed=0, sft=SFTConfig(pack=True), pad_id=tok.pad_id)
    batch = loader.next_batch()
    inputs, labels, docs = batch.input_ids, batch.labels, batch.doc_ids
    assert inputs.shape == docs.shape == labels.shape == (2, 64) and batch.position_ids is None
    assert int(docs[0].max()) >= 2  # several examples in one row
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=64),
                        seed=1)
    with torch.no_grad():
        packed = model(inputs, doc_ids=docs)
        for b in range(2):
            for k, ex in enumerate(loader.row_examples(b), 1):
                pos = (docs[b] == k).nonzero().flatten()
                alone = model(torch.from_numpy(enc.inputs[ex])[None])[0]
                assert torch.allclose(packed[b, pos], alone, atol=1e-5), (b, k)
        # the packed loss is the mean over the response targets of all examples in the batch (the dense
        # [seq, seq] segment mask this replaced gave the same; observed |diff| ~1e-7)
        y = labels[labels >= 0]
        assert y.numel() == sum(int((enc.labels[i] >= 0).sum()) for b in range(2) for i in loader.row_examples(b))
        assert abs(float(model(inputs, labels, doc_ids=docs)) - documents_one_by_one(model, batch)) <= 1e-5


def test_loader_order_resume_and_dp(tok):
    exs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(40)]
    enc = encode_all(exs, tok, SFTConfig(), seq_len=32, where="t")
    one = SFTLoader(enc, 32, 2, 0, 1, seed=5, sft=SFTConfig(pack=True), pad_id=3)
    batches = [one.next_batch().input_ids for _ in range(6)]
    # two data-parallel ranks deal the same global rows
    r0, r1 = (SFTLoader(enc, 32, 1, r, 2, seed=5, sft=SFTConfig(pack=True), pad_id=3) for r in (0, 1))
    for k in range(6):
        assert torch.equal(torch.cat([r0.next_batch().input_ids, r1.next_batch().input_ids]), batches[k])
    # resume from a state dict
    again = SFTLoader(enc, 32, 2, 0, 1, seed=5, sft=SFTConfig(pack=True), pad_id=3)
    again.load_state_dict({"consumed_samples": 6, "sft_examples": enc.fingerprint})
    assert torch.equal(again.next_batch().input_ids, batches[3])
    with pytest.raises(BigtrainError):
        again.load_state_dict({"consumed_samples": 0, "sft_examples": "other"})
    # without packing: one example per row, plain [batch, seq] inputs
    flat = SFTLoader(enc, 32, 2, 0, 1, seed=5, sft=SFTConfig(pack=False), pad_id=3)
    b = flat.next_batch()
    assert b.input_ids.shape == (2, 32) and b.doc_ids is None and all(len(flat.row_examples(i)) == 1 for i in range(4))


def test_bad_records_are_one_line_errors(tmp_path):
    cases = {"notjson": "{", "noresp": json.dumps({"prompt": "x"}),
             "badrole": json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
             "noassistant": json.dumps({"messages": [{"role": "user", "content": "x"}]})}
    for name, line in cases.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text(line + "\n")
        with pytest.raises(BigtrainError, match=f"{name}.jsonl:1"):
            read_jsonl(p)
    with pytest.raises(BigtrainError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(BigtrainError, match="template"):
        SFTConfig.from_dict({"template": "nope"}, prefix="sft.")
