"""`bigtrain finetune` end to end: a tiny random Llama (Hugging Face directory) fine-tuned on "add one to each
digit" answers held-out prompts (greedy) with accuracy >= 0.9; bad inputs are one-line errors."""

from __future__ import annotations

import json
import random

import pytest

from tests.helpers import REPO, bigtrain, make_tiny_hf_llama, metrics

ACCURACY = 0.9


def _example(rng):
    d = [rng.randrange(10) for _ in range(3)]
    return {"prompt": "add one: " + " ".join(map(str, d)), "response": " ".join(str((x + 1) % 10) for x in d)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, corpus_tokenizer_dir):
    root = tmp_path_factory.mktemp("sft")
    make_tiny_hf_llama(root / "hf", corpus_tokenizer_dir, seed=0, init_range=0.02)
    rng = random.Random(0)
    for name, n in (("train", 2000), ("eval", 16), ("test", 50)):
        with open(root / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                f.write(json.dumps(_example(rng)) + "\n")
    return root


def test_finetuned_model_answers(setup):
    root = setup
    run = root / "run"
    bigtrain("finetune", str(REPO / "configs" / "sft-tiny.yaml"), "--init", str(root / "hf"), "--run-dir", str(run),
             f"sft.path={root / 'train.jsonl'}", f"sft.eval_path={root / 'eval.jsonl'}", "train.max_steps=120",
             "train.eval_interval=60", "train.log_interval=20", "checkpoint.interval=60")
    held = metrics(run, split="heldout")
    assert [r["step"] for r in held] == [60, 120] and held[-1]["loss"] < held[0]["loss"]

    from bigtrain.finetune.config import SFTConfig
    from bigtrain.finetune.data import encode_prompt
    from bigtrain.generate.inference import load_model_for_inference
    from bigtrain.generate.sampling import generate

    model, tok, _ = load_model_for_inference(run)
    right = 0
    tests = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    for ex in tests:
        ids = encode_prompt([{"role": "user", "content": ex["prompt"]}], tok, SFTConfig())
        out = generate(model, ids, max_new_tokens=10, eos_id=tok.eos_id)
        right += tok.decode(out[:-1] if out and out[-1] == tok.eos_id else out) == ex["response"]
    acc = right / len(tests)
    print(f"sft accuracy {acc:.2f} on {len(tests)} held-out prompts")
    assert acc >= ACCURACY


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    root = setup
    cfg = str(REPO / "configs" / "sft-tiny.yaml")
    cases = [([cfg, "--init", str(root / "hf"), "--run-dir", str(tmp_path / "a")], "sft.path is required"),
             ([cfg, "--init", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "b"),
               f"sft.path={root / 'train.jsonl'}"], "no such checkpoint"),
             ([cfg, "--init", str(root / "hf"), "--run-dir", str(tmp_path / "c"), f"sft.path={root / 'train.jsonl'}",
               "model.d_model=32"], "model.d_model"),
             ([cfg, "--init", str(root / "hf"), "--run-dir", str(tmp_path / "d"), f"sft.path={root / 'train.jsonl'}",
               "sft.template=nope"], "sft.template")]
    for args, needle in cases:
        r = bigtrain("finetune", *args, check=False)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.stderr
