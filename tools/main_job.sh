#!/usr/bin/env bash
# The main job on the bundled corpus, stage by stage: tokenizer → Ray preprocessing → training with
# tensor parallelism over 2 CPU processes → held-out evaluation → Hugging Face export (checked against transformers) →
# a generated sample → summary. Each stage's command is the one the README shows.
# Usage: tools/main_job.sh [OUT_DIR]   (default runs/quickstart; re-running resumes/reuses stages)
# MAIN_JOB_STEPS (default 300) sets the training steps; MAIN_JOB_STOP_AFTER=N ends the job after stage N.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
BIN=${VENV:-.venv}/bin
export PATH="$BIN:$PATH" DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
STEPS=${MAIN_JOB_STEPS:-300}
start=$(date +%s)
stage() {
  if [ -n "${MAIN_JOB_STOP_AFTER:-}" ] && [ "${1%%/*}" -gt "$MAIN_JOB_STOP_AFTER" ]; then
    printf '\nmain job stopped after stage %s (MAIN_JOB_STOP_AFTER) in %ss\n' "$MAIN_JOB_STOP_AFTER" $(( $(date +%s) - start ))
    exit 0
  fi
  printf '\n=== %s (%ss)\n' "$1" $(( $(date +%s) - start ))
}

stage "1/7 tokenizer: sentencepiece BPE, 4096 tokens"
[ -f "$OUT/tokenizer/tokenizer.model" ] || \
  bigtrain tokenizer train --input data/python-docs.jsonl.gz --vocab-size 4096 --output "$OUT/tokenizer"

stage "2/7 preprocess: Ray tasks → WebDataset shards"
bigtrain preprocess --input data/python-docs.jsonl.gz --tokenizer "$OUT/tokenizer" --output "$OUT/data" \
  --num-shards 8 --heldout-fraction 0.03 --workers 2

stage "3/7 train: TP=2 over 2 processes (torchrun), held-out eval every 100 steps"
# OMP_NUM_THREADS: the cores shared by the two ranks (unset, torchrun sets 1 and prints a warning banner).
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(getconf _NPROCESSORS_ONLN) / 2 > 0 ? $(getconf _NPROCESSORS_ONLN) / 2 : 1 ))} \
torchrun --standalone --nproc_per_node 2 -m bigtrain train configs/tiny-cpu.yaml --run-dir "$OUT/train" \
  data.path="$OUT/data" tokenizer="$OUT/tokenizer" model.vocab_size=4096 model.seq_len=128 \
  model.d_model=128 model.ffn_hidden=384 parallel.tp=2 train.max_steps="$STEPS" train.global_batch_size=16 \
  train.log_interval=25 train.eval_interval=100 checkpoint.interval=100

stage "4/7 eval: held-out loss, perplexity and bits-per-byte"
bigtrain eval --checkpoint "$OUT/train" --data "$OUT/data" --split heldout --output "$OUT/eval.json"

stage "5/7 export: LlamaForCausalLM, logits compared with transformers"
bigtrain export-hf --input "$OUT/train" --output "$OUT/hf" --force

stage "6/7 generate: sampling with a KV cache"
bigtrain generate --checkpoint "$OUT/train" --prompt "The Python interpreter" --max-new-tokens 40 \
  --temperature 0.8 --top-k 40 --seed 0 | tee "$OUT/sample.txt"

stage "7/7 summary"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "train" / "metrics.jsonl").read_text().splitlines() if l]
train = [r for r in rows if "split" not in r]
held = [r for r in rows if r.get("split") == "heldout"]
print(f"tokenizer      {out / 'tokenizer'}")
print(f"dataset        {out / 'data'}")
print(f"run            {out / 'train'}  (metrics.jsonl, tensorboard/, checkpoints/)")
print(f"loss curve     {out / 'train' / 'loss.png'}")
print(f"train loss     {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f} over {train[-1]['step']} steps")
ev = json.loads((out / "eval.json").read_text())
print(f"held-out       loss {ev['loss']:.3f}, perplexity {ev['ppl']:.1f}, bits/byte {ev['bpb']:.3f} "
      f"({ev['tokens']:,} tokens; {out / 'eval.json'})")
print(f"throughput     {sum(r['tokens_per_s'] for r in train) / len(train):,.0f} tokens/s")
print(f"hugging face   {out / 'hf'}  (AutoModelForCausalLM.from_pretrained loads it)")
print(f"sample         {out / 'sample.txt'}")
PY
printf '\nmain job done in %ss\n' $(( $(date +%s) - start ))
