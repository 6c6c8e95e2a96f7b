"""Hugging Face export, checked against transformers' own class for the family: a checkpoint of any layout, or a
LoRA checkpoint merged (``--merge``) or as a PEFT adapter for its base (``--adapter``, checked with peft); the
tokenizer and generation config travel with the weights."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bigtrain.convert import layout as L
from bigtrain.convert.checkpoint_io import atomic_dir, model_config, read_weights
from bigtrain.convert.hf import save_sharded
from bigtrain.errors import BigtrainError
from bigtrain.io import read_json
from bigtrain.model.config import ModelConfig
from bigtrain.tokenizer.base import GENERATION_CONFIG

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGIT_TOL = 1e-4


def fixed_batch(vocab: int, seq: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def compare_logits(hf_model, cfg: ModelConfig, ours) -> float:
    """Max |logits difference| on a fixed batch, bigtrain's model ``ours`` vs a transformers model."""
    tokens = fixed_batch(cfg.vocab_size, min(cfg.seq_len, 32))
    with torch.no_grad():
        a = ours(tokens).float()
        b = hf_model(tokens).logits.float()
    return float((a - b).abs().max())


def load_hf_model(hf_dir: Path, cfg: ModelConfig):
    import transformers

    return getattr(transformers, cfg.arch.hf_class).from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def _check_logits(diff: float, output, what: str) -> None:
    if not diff <= LOGIT_TOL:
        raise BigtrainError(f"{output}: {what} logits differ from bigtrain's by {diff:.3g} (tolerance {LOGIT_TOL}); "
                            "export refused")


def write_hf_model(out: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], tok, dtype: str,
                   max_shard_size: int) -> None:
    """config.json, generation_config.json and the safetensors shards of ``weights`` (canonical names)."""
    names = L.to_hf_names(cfg)
    tdtype = DTYPES[dtype]
    conf = cfg.arch.to_hf_config(cfg, *((tok.bos_id, tok.eos_id, tok.pad_id) if tok else (None, None, None)))
    conf.dtype = "bfloat16" if dtype == "bf16" else "float32"
    conf.save_pretrained(str(out))
    write_generation_config(out, conf, cfg, tok)
    save_sharded({names[k]: weights[k].to(tdtype) for k in L.expected_shapes(cfg)}, out, max_shard_size)


def export_hf(input: str | Path, output: str | Path, dtype: str = "fp32", tokenizer: str | Path | None = None,
              max_shard_size: int = 2 * 1024**3, check: bool = True, force: bool = False,
              lora_as: str | None = None) -> dict[str, Any]:
    """Export a checkpoint as a Hugging Face model directory. A LoRA checkpoint needs ``lora_as``: "merge" (the
    base with the adapters folded in) or "adapter" (a PEFT adapter directory, see :func:`export_adapter`)."""
    from bigtrain.convert.checkpoint_io import is_lora, open_checkpoint
    from bigtrain.convert.weights_io import read_lora
    from bigtrain.generate.inference import build_lora_model, build_model
    from bigtrain.model.lora import merge_adapters
    from bigtrain.tokenizer import load_tokenizer

    if dtype not in DTYPES:
        raise BigtrainError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    ckpt, meta = open_checkpoint(input)
    if lora_as is not None and not is_lora(meta):
        raise BigtrainError(f"--{lora_as}: {ckpt} is not a LoRA checkpoint (it was trained with lora.rank=0)")
    if is_lora(meta) and lora_as is None:
        raise BigtrainError(f"{ckpt} holds LoRA adapters: add --merge (a full model) or --adapter (a PEFT adapter "
                            "for the base model)")
    if lora_as == "adapter":
        return export_adapter(ckpt, meta, output, check=check, force=force)
    cfg = model_config(meta, ckpt)
    tdtype = DTYPES[dtype]
    if lora_as == "merge":
        base, adapters, lora = read_lora(ckpt, meta)
        weights = merge_adapters(base, adapters, lora)
    else:
        weights, _, _ = read_weights(ckpt)
    tok_path = Path(tokenizer) if tokenizer else (ckpt if meta.get("tokenizer") else None)
    tok = load_tokenizer(tok_path) if tok_path is not None else None
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise BigtrainError(f"{tok_path}: tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                            f"{cfg.vocab_size} (model.vocab_size)")
    report: dict[str, Any] = {"dtype": dtype, "family": cfg.family}
    with atomic_dir(output, force=force) as tmp:
        write_hf_model(tmp, cfg, weights, tok, dtype, max_shard_size)
        if tok is not None:
            report["tokenizer_documents_checked"] = export_tokenizer(tok, tmp, cfg.seq_len, meta)
        if check:
            if lora_as == "merge" and tdtype == torch.float32:
                ours = build_lora_model(cfg, base, adapters, lora)  # the adapters unmerged, as training ran them
            else:
                ours = build_model(cfg, {k: v.to(tdtype).float() for k, v in weights.items()})
            diff = compare_logits(load_hf_model(tmp, cfg), cfg, ours)
            report["max_logit_diff"] = diff
            _check_logits(diff, output, "the exported model's")
        if lora_as == "merge":
            report["merged_lora"] = {"base": meta["lora_base"], **lora.to_dict()}
        (tmp / "bigtrain_export.json").write_text(json.dumps(
            {"source": str(ckpt), "step": meta.get("step"), **report}, indent=2))
    return report


def export_adapter(ckpt: Path, meta: dict[str, Any], output: str | Path, check: bool = True,
                   force: bool = False) -> dict[str, Any]:
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for the run's base.

    The check exports the base (fp32) to a temporary directory, loads it with transformers' class for the family,
    puts the adapter on it with ``peft.PeftModel.from_pretrained`` and compares logits with bigtrain's LoRA model;
    it also requires peft to have loaded every adapter tensor, with the values written."""
    from peft import LoraConfig as PeftLoraConfig

    from bigtrain.convert.weights_io import read_lora
    from bigtrain.generate.inference import build_lora_model
    from bigtrain.model.lora import adapter_table

    cfg = model_config(meta, ckpt)
    base, adapters, lora = read_lora(ckpt, meta)
    table = adapter_table(cfg, lora)
    ref = meta["lora_base"]
    # PEFT finds the base by this name: the Hugging Face directory the run started from; a bigtrain base must be
    # exported first (bigtrain export-hf --input BASE), and the adapter pointed at that directory.
    base_name = ref["path"] if ref.get("kind") == "hf" else None
    report: dict[str, Any] = {"family": cfg.family, "base": ref, **lora.to_dict(), "peft_base_model": base_name}
    with atomic_dir(output, force=force) as tmp:
        PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                       target_modules=lora.peft_modules(), bias="none", task_type="CAUSAL_LM",
                       base_model_name_or_path=base_name).save_pretrained(str(tmp))
        from safetensors.torch import save_file

        save_file({table[k].hf_name: v.float().contiguous() for k, v in adapters.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if check:
            with tempfile.TemporaryDirectory(prefix="bigtrain-adapter-base-") as base_dir:
                write_hf_model(Path(base_dir), cfg, base, None, "fp32", 2 * 1024**3)
                report["max_logit_diff"] = _check_peft(Path(base_dir), tmp, cfg, table, adapters,
                                                      build_lora_model(cfg, base, adapters, lora))
            _check_logits(report["max_logit_diff"], output, "peft's (adapter on the base)")
        (tmp / "bigtrain_export.json").write_text(json.dumps(
            {"source": str(ckpt), "step": meta.get("step"), **report}, indent=2))
    return report


def _check_peft(base_dir: Path, adapter_dir: Path, cfg: ModelConfig, table, adapters, ours) -> float:
    """Load the adapter onto the base with peft; every adapter tensor must arrive with its value."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_hf_model(base_dir, cfg), str(adapter_dir)).eval()
    loaded = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    by_peft_name = {row.hf_name[:-len(".weight")]: name for name, row in table.items()}
    seen = 0
    for n, p in loaded.items():
        # peft names them <module>.lora_A.<adapter name>.weight
        module, _, rest = n.partition(".lora_")
        key = f"{module}.lora_{rest.split('.')[0]}"
        name = by_peft_name.get(key)
        if name is None:
            raise BigtrainError(f"{adapter_dir}: peft created adapter {n}, which bigtrain did not train")
        if not torch.equal(p.detach().float(), adapters[name].float()):
            raise BigtrainError(f"{adapter_dir}: peft loaded {n} with other values than bigtrain's {name}")
        seen += 1
    if seen != len(table):
        raise BigtrainError(f"{adapter_dir}: peft loaded {seen} adapter tensors of {len(table)}")
    return compare_logits(model, cfg, ours)


def write_generation_config(out: Path, conf, cfg: ModelConfig, tok) -> None:
    """The imported model's generation_config.json unchanged when it came with the tokenizer, else a greedy one."""
    from transformers import GenerationConfig

    carried = tok.generation_config_file() if tok is not None else None
    if carried is not None:
        shutil.copyfile(carried, out / GENERATION_CONFIG)
        return
    GenerationConfig(bos_token_id=conf.bos_token_id, eos_token_id=conf.eos_token_id, pad_token_id=conf.pad_token_id,
                     do_sample=False, max_length=cfg.seq_len).save_pretrained(str(out))


def export_tokenizer(tok, out: Path, model_max_length: int, meta: dict[str, Any]) -> int:
    """Write the tokenizer and check transformers' ids against bigtrain's on real text: documents of the data
    the model was trained on (when still readable) and the tokenizer's own sample. Returns the count checked."""
    from bigtrain.tokenizer.hf_export import sample_texts, save_hf_tokenizer, verify_hf_tokenizer

    save_hf_tokenizer(tok, out, model_max_length)
    texts = training_documents(meta, 200) + sample_texts(tok)
    verify_hf_tokenizer(out, tok, texts)
    return len(texts)


def training_documents(meta: dict[str, Any], limit: int) -> list[str]:
    """Up to ``limit`` documents of the raw inputs the checkpoint's datasets were preprocessed from."""
    from bigtrain.tokenizer.hf_export import documents_of

    paths = (meta.get("config") or {}).get("data", {}).get("path") or []
    inputs: list[Path] = []
    text_field = "text"
    for p in paths if isinstance(paths, list) else [paths]:
        manifest = Path(str(p)) / "manifest.json"
        if manifest.is_file():
            try:
                m = read_json(manifest)
                inputs += [Path(r["path"]) for r in m.get("inputs", [])]
                text_field = m.get("text_field", text_field)
            except (BigtrainError, KeyError, TypeError):
                continue
    return documents_of(inputs, limit, text_field)
