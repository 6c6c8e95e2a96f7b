"""`bigtrain eval`: bits-per-byte of a checkpoint is the same for every TP/PP layout and equals the in-training
held-out evaluation (itself the same under TP1 PP1, TP2 PP2 and DP2: two replicas of one micro-batch each evaluate
the windows one process evaluates in two); bad inputs are one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import REPO, bigtrain, metrics

MODEL = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden=128",
         "model.vocab_size=512", "model.seq_len=64"]
TRAIN = ["train.max_steps=2", "train.eval_interval=2", "train.eval_batches=2", "train.micro_batch_size=2",
         "train.global_batch_size=4", "train.warmup_steps=1", "checkpoint.interval=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus_tokenizer_dir):
    root = tmp_path_factory.mktemp("evaldata")
    (root / "tok").symlink_to(corpus_tokenizer_dir)  # read only here
    bigtrain("preprocess", "--input", str(REPO / "data" / "python-docs.jsonl.gz"), "--tokenizer", str(root / "tok"),
             "--output", str(root / "ds"), "--num-shards", "2", "--heldout-fraction", "0.1", "--workers", "1")
    return root


def _eval(ckpt, data, out, tokens):
    bigtrain("eval", "--checkpoint", str(ckpt), "--data", str(data), "--max-tokens", str(tokens), "--output", str(out))
    return json.loads(out.read_text())


def test_bpb_same_for_every_layout(dataset, tmp_path):
    data = dataset / "ds"
    runs = {}
    for name, par, nproc in (("tp1pp1", ["parallel.tp=1", "parallel.pp=1"], 1),
                             ("tp2pp2", ["parallel.tp=2", "parallel.pp=2"], 4),
                             ("dp2", ["parallel.zero_stage=1", "train.eval_batches=1"], 2)):
        run = tmp_path / name
        bigtrain("train", str(REPO / "configs" / "tiny-cpu.yaml"), "--run-dir", str(run), f"data.path={data}",
                 *MODEL, *TRAIN, *par, nproc=nproc)
        (rec,) = metrics(run, split="heldout")
        runs[name] = (run, rec)
    a = runs["tp1pp1"][1]
    for name in ("tp2pp2", "dp2"):
        b = runs[name][1]
        assert a["bytes"] == b["bytes"] and a["tokens"] == b["tokens"] == 2 * 2 * 64, (name, a, b)
        assert math.isclose(a["bpb"], b["bpb"], rel_tol=1e-4) and math.isclose(a["loss"], b["loss"], rel_tol=1e-4), \
            (name, a, b)
    # bpb itself (nats and bytes each computed by hand) is proven by tests/unit/test_eval_bpb.py

    # the standalone evaluation of each checkpoint, on the same windows, agrees with its in-training record
    for name, (run, rec) in runs.items():
        res = _eval(run, data, tmp_path / f"{name}.json", rec["tokens"])
        assert res["tokens"] == rec["tokens"] and res["bytes"] == rec["bytes"]
        assert math.isclose(res["bpb"], rec["bpb"], rel_tol=1e-4), (name, res, rec)
        runs[name] = (run, res)

    # one fixed checkpoint in another layout (converted TP1 PP1 → TP2 PP2) reads the same, to the last digit
    conv = tmp_path / "conv"
    bigtrain("convert", "--input", str(runs["tp1pp1"][0]), "--output", str(conv), "--tp", "2", "--pp", "2")
    cons = tmp_path / "cons"
    bigtrain("convert", "--input", str(conv), "--output", str(cons), "--to", "consolidated")
    full_a = _eval(runs["tp1pp1"][0], data, tmp_path / "a.json", 0)
    for ck in (conv, cons):
        res = _eval(ck, data, tmp_path / "c.json", 0)
        assert math.isclose(res["bpb"], full_a["bpb"], rel_tol=1e-6) and res["bytes"] == full_a["bytes"]
    print("bpb", {k: v[1]["bpb"] for k, v in runs.items()}, "full heldout", full_a["bpb"])


def test_no_bpb_in_training_with_document_masking(dataset, tmp_path):
    """Masked windows leave some targets out of the loss, so in-training bpb (which counts every target's bytes) is
    not reported then; the loss is, and `bigtrain eval` still gives bpb for the checkpoint."""
    run = tmp_path / "masked"
    bigtrain("train", str(REPO / "configs" / "tiny-cpu.yaml"), "--run-dir", str(run), f"data.path={dataset / 'ds'}",
             *MODEL, *TRAIN, "data.document_masking=true", "checkpoint.interval=2")
    (rec,) = metrics(run, split="heldout")
    assert rec["loss"] > 0 and "bpb" not in rec and "bytes" not in rec, rec
    assert _eval(run, dataset / "ds", tmp_path / "e.json", 256)["bpb"] > 0


def test_bad_inputs_are_one_line_errors(dataset, tmp_path):
    none, tok = tmp_path / "none", dataset / "tok"
    cases = [(["--checkpoint", str(none), "--data", str(dataset / "ds")],
              f"--checkpoint {none}: no such checkpoint directory"),
             (["--checkpoint", str(tok), "--data", str(dataset / "ds")],  # a directory, but no checkpoint
              f"{tok}: no complete checkpoint here (expected bigtrain.json or checkpoints/step_*/)"),
             (["--checkpoint", str(dataset), "--data", str(dataset / "ds"), "--max-tokens", "-1"],
              "--max-tokens -1: must not be negative")]
    for args, message in cases:
        r = bigtrain("eval", *args, check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"bigtrain: error: {message}", r.stderr
