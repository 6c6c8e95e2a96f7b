"""Shared helpers: run the real CLI (one rank or several: tests/forkserver.py, or torchrun) and read its runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny-cpu.yaml")

# The reference runs several modules compare with (tests/conftest.py: ref_run, in each layout of
# bigtrain/parallel/layouts.py: CPU_LAYOUTS): the tiny recipe, 20 steps, a
# checkpoint at 10 (resume, reshard) and a gradient clip that binds (so the global norm must be right too).
REF_ARGS = ["train.max_steps=20", "train.log_interval=1", "checkpoint.interval=10", "checkpoint.keep=2",
            "model.n_layers=2", "train.grad_clip=0.5"]


def env_for_tests() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def bigtrain(*args: str, nproc: int = 1, timeout: int = 600, check: bool = True,
             env: dict[str, str] | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """``bigtrain ARGS`` on ``nproc`` ranks, as ``subprocess.run`` returns it (see ``python``)."""
    return python(["-m", "bigtrain"], *args, nproc=nproc, timeout=timeout, check=check, env=env, fresh=fresh)


def python(target: list[str], *args: str, nproc: int = 1, timeout: int = 600, check: bool = True,
           env: dict[str, str] | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python TARGET ARGS`` (TARGET: ``["-m", MODULE]`` or ``[SCRIPT]``) on ``nproc`` ranks. The ranks are forked
    from tests/forkserver.py (imports done once per session) unless ``fresh``: a new interpreter, under
    ``torchrun --standalone`` for several ranks, for tests of the launcher itself or of what a new process prints
    (also with --verbose or BIGTRAIN_VERBOSE set, and for every call with BIGTRAIN_TEST_FORK=0)."""
    env = env or env_for_tests()
    fresh = (fresh or "--verbose" in args or env.get("BIGTRAIN_VERBOSE") == "1"
             or os.environ.get("BIGTRAIN_TEST_FORK") == "0")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *launcher, *target, *args]
    if fresh:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    else:
        from tests import forkserver

        cmd = [f"forkserver[{nproc}]", *target, *args]
        entry = {"module": target[1]} if target[0] == "-m" else {"script": str(Path(target[0]).resolve())}
        proc = forkserver.run(list(args), nproc=nproc, env=env, cwd=str(REPO), timeout=timeout, cmd=cmd, **entry)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def make_tiny_hf_llama(path: Path, tokenizer_dir: Path, *, seed: int, tied: bool = False,
                       init_range: float = 0.02) -> None:
    """A small random transformers LlamaForCausalLM (GQA: 4 heads, 2 KV heads) with our tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bigtrain.tokenizer import load_tokenizer
    from bigtrain.tokenizer.hf_export import save_hf_tokenizer

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                      tie_word_embeddings=tied, initializer_range=init_range)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    save_hf_tokenizer(load_tokenizer(tokenizer_dir), path, 64)


def metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r.get("split") == split]


def losses(run_dir: str | Path) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]


def documents_one_by_one(model, batch) -> float:
    """Token-weighted mean loss of every document of a packed ``Batch`` (runs of equal ``doc_ids``), each run
    alone from position 0: what document masking must reproduce."""
    import torch.nn.functional as F

    nats, count = 0.0, 0
    for r in range(batch.input_ids.shape[0]):
        docs = batch.doc_ids[r]
        cuts = [0] + [i for i in range(1, len(docs)) if docs[i] != docs[i - 1]] + [len(docs)]
        for a, e in zip(cuts, cuts[1:]):
            x, y = batch.input_ids[r, a:e], batch.labels[r, a:e]
            keep = y >= 0
            if not keep.any():
                continue
            logits = model(x[None])[0].float()
            nats += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
            count += int(keep.sum())
    return nats / count
