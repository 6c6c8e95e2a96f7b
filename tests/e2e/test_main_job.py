"""The README's main job, run by the same script the quickstart runs (fewer steps): tokenizer →
Ray preprocessing → TP=2 training on the shards → summary. Guards the README against rot."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bigtrain.data.shards import read_shard
from tests.helpers import REPO, env_for_tests, metrics

# Observed after 20 steps: loss 6.697 against a unigram entropy of 6.640 nats (0.06 above; the untrained model is at
# ln 4096 = 8.3), held-out bpb 2.496 against 3.112 for a uniform model (0.80 of it).
UNIGRAM_MARGIN = 0.3
BPB_FRACTION = 0.9


def test_main_job_script(tmp_path):
    env = env_for_tests()
    env["VENV"] = str(Path(sys.executable).parent.parent)
    env["MAIN_JOB_STEPS"] = "20"
    out = tmp_path / "qs"
    proc = subprocess.run(["bash", "tools/main_job.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for stage in ("1/7 tokenizer", "2/7 preprocess", "3/7 train", "4/7 eval", "5/7 export", "6/7 generate",
                  "7/7 summary"):
        assert stage in proc.stdout
    rows = metrics(out / "train")
    assert rows[-1]["step"] == 20
    held = metrics(out / "train", split="heldout")
    assert held and held[-1]["step"] == 20
    # Against what the data allows, not a constant: the unigram entropy of the training tokens is what learning
    # token frequencies alone reaches (uniform would be ln 4096 = 8.3).
    counts = np.bincount(np.concatenate([read_shard(p)[2] for p in sorted((out / "data" / "train").glob("*.tar"))])
                         .astype(np.int64), minlength=4096)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    print(f"main job: step-20 loss {rows[-1]['loss']:.4f}, unigram entropy {unigram:.4f} nats")
    assert rows[-1]["loss"] < UNIGRAM_MARGIN + unigram
    ckpt = out / "train" / "checkpoints" / "step_00000020"
    meta = json.loads((ckpt / "bigtrain.json").read_text())
    assert meta["tokenizer"] == "tokenizer" and (ckpt / "tokenizer" / "tokenizer.model").is_file()
    assert meta["layout"]["tp"] == 2 and meta["config"]["data"]["path"] == [str(out / "data")]
    assert "held-out       loss" in proc.stdout and "main job done" in proc.stdout
    assert "logits match transformers" in proc.stdout + proc.stderr
    # No third-party warning reaches the console (bigtrain/quiet.py): no Python warning from a library, no
    # torchrun banner (W1206 12:00:00 …), no DeepSpeed op-build line, no transformers progress bar.
    noise = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if "site-packages" in ln or "Warning" in ln or re.match(r"[WE]\d{4} ", ln)
             or "built successfully" in ln or "Loading weights" in ln]
    assert not noise, noise[:6]
    ev = json.loads((out / "eval.json").read_text())
    uniform_bpb = math.log2(4096) * ev["tokens"] / ev["bytes"]  # a model that learned nothing
    print(f"main job: held-out bpb {ev['bpb']:.4f}, uniform {uniform_bpb:.4f}")
    assert ev["split"] == "heldout" and ev["tokens"] > 0 and ev["ppl"] > 1 and 0 < ev["bpb"] < BPB_FRACTION * uniform_bpb
    assert (out / "hf" / "config.json").is_file() and (out / "sample.txt").read_text().startswith("The Python")
    # Re-running reuses the tokenizer and the verified shards, and the finished run stays finished (the later
    # stages only read what these leave, so the re-run stops after training).
    again = subprocess.run(["bash", "tools/main_job.sh", str(out)], cwd=REPO, env={**env, "MAIN_JOB_STOP_AFTER": "3"},
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is up to date (9 shards verified)" in again.stdout
    assert "resumed from" in again.stdout and "main job stopped after stage 3" in again.stdout
    assert [r["step"] for r in metrics(out / "train")] == [r["step"] for r in rows]
