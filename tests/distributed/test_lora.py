"""Fine-tuning in every layout: full SFT and LoRA give one process's losses under TP=2 and PP=2 (LoRA also under
DP=2 with ZeRO-3 partitioning every tensor, and TP=2 with adapter dropout); LoRA leaves the base bit-identical,
trains and optimizes only adapters, and saves only adapters plus a checked reference to the base; its merged export
and its PEFT adapter (loaded by peft onto the base) reproduce bigtrain's LoRA model; a resumed LoRA run (PP=2, bf16,
tied embeddings) reproduces the uninterrupted one; bad settings and a changed base are one-line errors."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, bigtrain, make_tiny_hf_llama, metrics, python

SFT = str(REPO / "configs" / "sft-tiny.yaml")
RTOL = 1e-5  # tighter than the 1e-4: observed at most 1.9e-7 (full SFT TP=2) and 8.2e-8 (LoRA), printed below
LOGIT_TOL = 1e-4  # fp32
COMMON = ["train.max_steps=4", "train.log_interval=1", "train.warmup_steps=0", "train.lr=1e-2"]
LORA = ["lora.rank=4", "lora.alpha=8", "lora.targets=[q,k,v,o,gate,up,down]"]  # column- and row-parallel targets


def _example(rng: random.Random) -> dict:
    d = [rng.randrange(10) for _ in range(3)]
    return {"prompt": "add one: " + " ".join(map(str, d)), "response": " ".join(str((x + 1) % 10) for x in d)}


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_tokenizer_dir):
    root = tmp_path_factory.mktemp("lora")
    # 2 layers, 4 heads, 2 KV heads; tied embeddings: under PP the frozen embedding is shared by both stages
    make_tiny_hf_llama(root / "hf", corpus_tokenizer_dir, seed=0, tied=True)
    rng = random.Random(0)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(200):
            f.write(json.dumps(_example(rng)) + "\n")
    return root


def finetune(root: Path, name: str, *extra: str, nproc: int = 1, worker: bool = False, check: bool = True):
    run = root / name
    args = [SFT, "--init", str(root / "hf"), "--run-dir", str(run), f"sft.path={root / 'train.jsonl'}", *COMMON,
            *extra]
    if not worker:
        return bigtrain("finetune", *args, nproc=nproc, check=check)
    return python([str(Path(__file__).with_name("lora_worker.py"))], *args[:1], *args[2:3], *args[4:], nproc=nproc)


def same_losses(name: str, got: list[dict], ref: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3, 4], name
    rel = [abs(g["loss"] - r["loss"]) / r["loss"] for g, r in zip(got, ref)]
    print(json.dumps({name: rel}))
    assert max(rel) <= RTOL, (name, rel)


# ----------------------------------------------------------------------------------------------- full SFT
@pytest.fixture(scope="module")
def full_one(base):
    finetune(base, "full-one", "checkpoint.interval=0")
    return metrics(base / "full-one")


@pytest.mark.parametrize("name,extra", [("tp2", ["parallel.tp=2"]), ("pp2", ["parallel.pp=2"])])
def test_full_sft_layouts_match_one_process(base, full_one, name, extra):
    finetune(base, f"full-{name}", "checkpoint.interval=0", *extra, nproc=2)
    same_losses(f"full-{name}", metrics(base / f"full-{name}"), full_one)


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_one(base):
    finetune(base, "lora-one", "checkpoint.interval=2", *LORA, worker=True)
    return metrics(base / "lora-one")


DROPOUT = ["lora.dropout=0.1"]


@pytest.fixture(scope="module")
def lora_one_dropout(base):
    finetune(base, "lora-one-dropout", "checkpoint.interval=4", *LORA, *DROPOUT, worker=True)
    return metrics(base / "lora-one-dropout")


def _memory_reports(run: Path) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted(run.glob("memory-rank*.json"))]
    assert reports
    return reports


@pytest.mark.parametrize("name,nproc,extra", [
    ("one", 1, []),
    # adapter dropout draws one mask over the full input on every TP rank: the single process's masks
    ("tp2-dropout", 2, ["parallel.tp=2", *DROPOUT]),
    ("pp2", 2, ["parallel.pp=2", "train.activation_checkpointing=true"]),
    # every tensor partitioned (the tiny model's are all below DeepSpeed's 1e5-element persistence threshold)
    ("dp2-zero3", 2, ["parallel.zero_stage=3", "parallel.zero3_persistence_elements=0", "train.micro_batch_size=4"]),
])
def test_lora_layouts_match_one_process_and_keep_the_base(base, lora_one, lora_one_dropout, name, nproc, extra):
    from bigtrain.model.lora import LoraConfig, adapter_table

    run = base / f"lora-{name}"
    reference = "lora-one-dropout" if DROPOUT[0] in extra else "lora-one"
    if name != "one":
        finetune(base, f"lora-{name}", "checkpoint.interval=4", *LORA, *extra, nproc=nproc, worker=True)
        same_losses(f"lora-{name}", metrics(run), metrics(base / reference))
    if reference != "lora-one":  # the dropout did something: the runs without it differ after the first update
        assert metrics(base / reference)[-1]["loss"] != lora_one[-1]["loss"]
    for rep in _memory_reports(run):  # every rank: the base untouched, only adapters trained
        assert not rep["frozen_changed"] and rep["frozen_identical"] > 0, rep
        assert rep["trainable"] and all(".lora_" in n for n in rep["trainable"]) and not rep["frozen_adapters"], rep
        if "zero" not in name:  # ZeRO-0: the optimizer holds the parameters themselves
            assert rep["optimizer_params"] == sorted(rep["trainable"]), rep
    ckpt = run / "checkpoints" / "step_00000004"
    meta = json.loads((ckpt / "bigtrain.json").read_text())
    assert meta["lora_base"]["path"] == str((base / "hf").resolve()) and len(meta["lora_base"]["sha256"]) == 64
    # DeepSpeed's files hold adapters only (and megatron's empty extra state); the base is referenced, not copied
    for f in ckpt.glob("*model_states.pt"):
        sd = torch.load(f, map_location="cpu", weights_only=False)
        module = sd.get("module", sd) or {}
        kept = [k for k in module if not k.endswith("_extra_state")]
        assert all(".lora_" in k for k in kept), (f.name, kept[:3])
    from safetensors.torch import load_file

    from bigtrain.config.job import JobConfig

    adapters = load_file(str(ckpt / "adapter.safetensors"))
    job = JobConfig.from_dict(meta["config"])
    assert set(adapters) == set(adapter_table(job.model, LoraConfig.from_dict(meta["config"]["lora"])))
    ref = load_file(str(base / reference / "checkpoints" / "step_00000004" / "adapter.safetensors"))
    diff = max(float((adapters[k] - ref[k]).abs().max()) for k in ref)
    print(json.dumps({f"lora-{name} adapter max diff": diff}))
    assert diff <= 1e-5  # observed: 0 (one process, PP=2), 1.5e-6 (TP=2), 1e-6 (ZeRO-3)


def _lora_model(run: Path):
    from safetensors.torch import load_file

    from bigtrain.convert.checkpoint_io import model_config, open_checkpoint
    from bigtrain.convert.hf import hf_to_canonical, read_hf_weights
    from bigtrain.generate.inference import build_lora_model
    from bigtrain.model.lora import LoraConfig

    ckpt, meta = open_checkpoint(run)
    cfg = model_config(meta, ckpt)
    hf_dir = Path(meta["lora_base"]["path"])
    base = hf_to_canonical(read_hf_weights(hf_dir), cfg, str(hf_dir))
    adapters = load_file(str(ckpt / "adapter.safetensors"))
    return build_lora_model(cfg, base, adapters, LoraConfig.from_dict(meta["config"]["lora"])), cfg


def test_merged_and_peft_exports_reproduce_the_lora_model(base, lora_one, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    run = base / "lora-one"
    r = bigtrain("export-hf", "--input", str(run), "--output", str(tmp_path / "merged"), "--merge")
    assert "LoRA merged" in r.stdout
    r = bigtrain("export-hf", "--input", str(run), "--output", str(tmp_path / "adapter"), "--adapter")
    assert "peft on the base matches" in r.stdout
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["lora_alpha"] == 8
    assert Path(conf["base_model_name_or_path"]) == (base / "hf").resolve()  # the HF directory training started from
    assert sorted(conf["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"])

    ours, cfg = _lora_model(run)
    tokens = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ours(tokens).float()
        merged = LlamaForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
        hf_base = LlamaForCausalLM.from_pretrained(str(base / "hf"), dtype=torch.float32).eval()
        base_logits = hf_base(tokens).logits.float()
        peft = PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
        diffs = {"merged": float((merged(tokens).logits.float() - want).abs().max()),
                 "peft": float((peft(tokens).logits.float() - want).abs().max()),
                 "base (must differ)": float((base_logits - want).abs().max())}
    print(json.dumps(diffs))
    assert diffs["merged"] <= LOGIT_TOL and diffs["peft"] <= LOGIT_TOL, diffs
    assert diffs["base (must differ)"] > 100 * LOGIT_TOL, diffs  # the adapters moved the model


def test_lora_checkpoint_generates_and_evaluates_as_its_merged_model(base, lora_one, tmp_path):
    """`generate` and `eval` load a LoRA checkpoint (generate.inference.load_model_for_inference) as its base with
    the adapters merged; `convert` refuses it in one line."""
    from bigtrain.generate.inference import load_model_for_inference

    run = base / "lora-one"
    loaded, _, _ = load_model_for_inference(run)
    ours, cfg = _lora_model(run)  # the adapters beside the frozen base, as training ran them
    tokens = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert float((loaded(tokens).float() - ours(tokens).float()).abs().max()) <= LOGIT_TOL
    # Through the CLI: the same greedy text as the merged export brought back as a plain checkpoint.
    bigtrain("export-hf", "--input", str(run), "--output", str(tmp_path / "merged"), "--merge")
    bigtrain("import-hf", "--input", str(tmp_path / "merged"), "--output", str(tmp_path / "plain"))
    prompt = ["--prompt", "add one: 1 2 3", "--max-new-tokens", "12", "--ids"]
    a = bigtrain("generate", "--checkpoint", str(run), *prompt).stdout
    b = bigtrain("generate", "--checkpoint", str(tmp_path / "plain"), *prompt).stdout
    assert a == b and a.strip(), (a, b)
    _one_line_error(bigtrain("convert", "--input", str(run), "--output", str(tmp_path / "c"), "--tp", "2",
                             check=False), "a LoRA checkpoint (adapters on")


def test_resumed_lora_run_reproduces_the_uninterrupted_one(base):
    """PP=2 in bf16 with the tied embedding frozen on both stages: DeepSpeed's files (adapters only, loaded without
    strictness, checked against adapter.safetensors) and its bf16 optimizer's fp32 masters carry the run on."""
    from safetensors.torch import load_file

    layout = ["parallel.pp=2", "train.precision=bf16", "checkpoint.interval=2", *LORA]
    finetune(base, "lora-pp2-bf16", *layout, nproc=2)
    whole = metrics(base / "lora-pp2-bf16")
    run = base / "lora-resumed"
    shutil.copytree(base / "lora-pp2-bf16", run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in whole if r["step"] <= 2))
    r = finetune(base, "lora-resumed", *layout, nproc=2)
    assert "resumed from" in r.stdout
    assert [g["loss"] for g in metrics(run)] == [w["loss"] for w in whole], (metrics(run), whole)
    a = load_file(str(run / "checkpoints" / "step_00000004" / "adapter.safetensors"))
    b = load_file(str(base / "lora-pp2-bf16" / "checkpoints" / "step_00000004" / "adapter.safetensors"))
    assert all(a[k].dtype == torch.float32 and torch.equal(a[k], b[k]) for k in b)  # fp32 masters, bit for bit


def _one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-3000:]


def test_bad_lora_settings_are_one_line_errors(base, tmp_path):
    _one_line_error(finetune(base, "bad-target", "lora.rank=4", "lora.targets=[q,qkv]", check=False),
                    "lora.targets: unknown target 'qkv'")
    # v_proj's weight is [32, 64] (2 KV heads of 16): rank 40 fits q_proj [64, 64] but not v_proj
    _one_line_error(finetune(base, "bad-rank", "lora.rank=40", "lora.targets=[q,v]", check=False),
                    "lora.rank=40 is larger than self_attn.v_proj's dimension")


def test_lora_export_flags_need_a_lora_checkpoint(base, full_one, tmp_path):
    _one_line_error(bigtrain("export-hf", "--input", str(base / "full-one"), "--output", str(tmp_path / "m"),
                             "--adapter", check=False), "is not a LoRA checkpoint")


def test_resuming_on_a_changed_base_is_refused(base, lora_one, tmp_path):
    from safetensors.torch import load_file, save_file

    changed = tmp_path / "hf-changed"
    shutil.copytree(base / "hf", changed)
    weights = load_file(str(changed / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.01
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    run = tmp_path / "run"
    shutil.copytree(base / "lora-one", run)
    proc = bigtrain("finetune", SFT, "--init", str(changed), "--run-dir", str(run), f"sft.path={base / 'train.jsonl'}",
                    *COMMON[1:], "train.max_steps=6", *LORA, check=False)
    _one_line_error(proc, "these adapters were trained on base")
    # the export reads the recorded base and checks it the same way
    (base / "hf" / "model.safetensors").rename(tmp_path / "kept.safetensors")
    try:
        shutil.copyfile(changed / "model.safetensors", base / "hf" / "model.safetensors")
        _one_line_error(bigtrain("export-hf", "--input", str(base / "lora-one"), "--output", str(tmp_path / "m"),
                                 "--merge", check=False), "has changed since training")
    finally:
        (tmp_path / "kept.safetensors").replace(base / "hf" / "model.safetensors")
