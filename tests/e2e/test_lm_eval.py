"""lm-eval-harness: the `bigtrain` model over a bigtrain checkpoint and `lm_eval --model hf` over its
`bigtrain export-hf` export give the same results on the local tasks (multiple choice → loglikelihood,
generate_until, loglikelihood_rolling)."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import bigtrain, env_for_tests, make_tiny_hf_llama, python

TASKS = "bigtrain_digits_mc,bigtrain_digits_gen,bigtrain_digits_ppl"
pytest.importorskip("lm_eval")


def _lm_eval(module, args, out):
    env = {**env_for_tests(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    python(["-m", module], *args, "--tasks", TASKS, "--include_path", "bigtrain/eval/tasks", "--output_path", str(out),
           "--batch_size", "1", env=env)
    (path,) = list(out.rglob("results_*.json"))
    return json.loads(path.read_text())["results"]


def test_bigtrain_model_and_hf_export_agree(tmp_path, corpus_tokenizer_dir):
    make_tiny_hf_llama(tmp_path / "orig", corpus_tokenizer_dir, seed=3, init_range=0.2)
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    bigtrain("import-hf", "--input", str(tmp_path / "orig"), "--output", str(ckpt))
    bigtrain("export-hf", "--input", str(ckpt), "--output", str(export))

    ours = _lm_eval("bigtrain.eval.harness", ["--model", "bigtrain", "--model_args", f"checkpoint={ckpt},max_length=64"],
                    tmp_path / "ours")
    theirs = _lm_eval("lm_eval", ["--model", "hf", "--model_args", f"pretrained={export},dtype=float32,max_length=64",
                                  "--device", "cpu"], tmp_path / "theirs")
    print(json.dumps(ours, indent=1))
    assert set(ours) == set(theirs) == set(TASKS.split(","))

    def numbers(res: dict) -> dict:
        return {m: v for m, v in res.items() if m != "alias" and isinstance(v, (int, float))}

    for task in ours:
        a, b = numbers(ours[task]), numbers(theirs[task])
        assert a and set(a) == set(b), (task, sorted(set(a) ^ set(b)))  # a metric only one side reports fails too
        for metric in a:
            assert math.isclose(a[metric], b[metric], rel_tol=1e-5, abs_tol=1e-9), (task, metric, a[metric], b[metric])
