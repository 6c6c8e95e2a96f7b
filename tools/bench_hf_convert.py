"""Time and peak memory of ``bigtrain import-hf`` and ``export-hf`` on a ≥100M-parameter model, beside
transformers' own load + save of the same model (the reference).

    DS_ACCELERATOR=cpu python tools/bench_hf_convert.py [--dir /tmp] [--family llama|mistral|qwen2] [--layers 30]

The model is made by transformers with SmolLM-135M's shape (30 layers, d=576, 9 heads / 3 KV heads, ffn 1536,
49,152-token vocabulary, tied): 135M parameters, 0.54 GB in fp32. Each command runs in its own process; its peak
resident memory (including the worker processes it waits for) comes from ``wait4``. ``import-hf`` writes a
DeepSpeed checkpoint (TP = PP = 1, so its own worker world builds the engine); ``export-hf`` writes safetensors,
then loads the export with transformers and compares logits with bigtrain's model, so it holds two models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}

REFERENCE = """
import sys, torch, transformers as T
m = getattr(T, sys.argv[1]).from_pretrained(sys.argv[2], dtype=torch.float32)
m.save_pretrained(sys.argv[3])
"""


def measured(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of ``cmd`` and the processes it waited for."""
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "BIGTRAIN_NO_PROGRESS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="scratch directory (about 3 GB)")
    ap.add_argument("--family", default="llama", choices=sorted(CLASSES))
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="fewer for a quick run")
    args = ap.parse_args()
    import torch
    import transformers as T

    conf_cls, model_cls = CLASSES[args.family]
    root = Path(tempfile.mkdtemp(prefix="bench-hf-", dir=args.dir))
    try:
        torch.manual_seed(0)
        model = getattr(T, model_cls)(getattr(T, conf_cls)(**{**SHAPE, "num_hidden_layers": args.layers}))
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(root / "hf"))
        del model
        gb = params * 4 / 1e9
        py = sys.executable
        rows = [
            ("transformers load + save (reference)",
             measured([py, "-c", REFERENCE, model_cls, str(root / "hf"), str(root / "ref")])),
            ("bigtrain import-hf",
             measured([py, "-m", "bigtrain", "import-hf", "--input", str(root / "hf"), "--output", str(root / "ckpt")])),
            ("bigtrain export-hf (+ logits check)",
             measured([py, "-m", "bigtrain", "export-hf", "--input", str(root / "ckpt"), "--output", str(root / "out")])),
        ]
        ref_s, ref_gb = rows[0][1]
        print(f"{args.family}: {params / 1e6:.1f}M parameters, {gb:.2f} GB in fp32")
        print(f"{'step':<38} {'seconds':>8} {'× ref':>6} {'peak RSS GB':>12} {'× ref':>6} {'× model':>8}")
        for name, (s, mem) in rows:
            print(f"{name:<38} {s:>8.1f} {s / ref_s:>6.2f} {mem:>12.2f} {mem / ref_gb:>6.2f} {mem / gb:>8.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
