"""Hugging Face LlamaForCausalLM export (checked against transformers) and import."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bigtrain.convert import layout as L
from bigtrain.convert.checkpoint_io import _progress, atomic_dir, model_config, read_weights
from bigtrain.errors import BigtrainError
from bigtrain.io import read_json
from bigtrain.model.config import ModelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGIT_TOL = 1e-4
SAMPLE_TEXTS = ["Hello world", "  def foo(x):\n    return x ** 2\n", "ünïcödé 你好 🎉 123 4567", "a  b\tc\n\nd",
                " leading space and trailing  ", "The quick brown fox jumps over the lazy dog."]


# ------------------------------------------------------------------------------------------- tokenizer
def write_hf_tokenizer(sp_model: Path, out: Path, model_max_length: int) -> None:
    """A LlamaTokenizer directory (tokenizer.json, tokenizer_config.json, tokenizer.model) whose ids equal
    sentencepiece's: dummy prefix on every call, whitespace split like sentencepiece, digits split. Loaded as a
    plain PreTrainedTokenizerFast so that transformers keeps this pipeline (LlamaTokenizer rebuilds its own,
    which merges leading spaces differently from sentencepiece). ``tok(text)`` prepends <s> as Llama does."""
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(sp_model, Path(tmp) / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=None)
        tok.model_max_length = model_max_length
        tok.pad_token = "<pad>"
        tok.save_pretrained(str(out))
    j = json.loads((out / "tokenizer.json").read_text())
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True},
        {"type": "Digits", "individual_digits": True}]}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    (out / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False, indent=1))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.update({"add_bos_token": True, "add_eos_token": False, "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    cfg.pop("is_local", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    shutil.copy(sp_model, out / "tokenizer.model")


def check_hf_tokenizer(hf_dir: Path, sp_tok) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    for text in SAMPLE_TEXTS:
        ours, theirs = sp_tok.encode(text), tok.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise BigtrainError(f"{hf_dir}: exported tokenizer encodes {text!r} as {theirs[:8]}…, "
                                f"sentencepiece as {ours[:8]}…")
        if tok.decode(theirs) != sp_tok.decode(ours):
            raise BigtrainError(f"{hf_dir}: exported tokenizer does not decode {text!r} like sentencepiece")


# ------------------------------------------------------------------------------------------- config
def hf_config(cfg: ModelConfig, tok=None) -> dict[str, Any]:
    from transformers import LlamaConfig

    c = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False, mlp_bias=False, attention_dropout=0.0, initializer_range=cfg.init_std,
        bos_token_id=tok.bos_id if tok else 1, eos_token_id=tok.eos_id if tok else 2,
        pad_token_id=tok.pad_id if tok else 3, architectures=["LlamaForCausalLM"])
    return c


def model_config_from_hf(hf: dict[str, Any], where: str) -> ModelConfig:
    if hf.get("model_type") != "llama":
        raise BigtrainError(f"{where}: model_type {hf.get('model_type')!r} is not supported "
                            f"(expected 'llama', a LlamaForCausalLM)")
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in archs:
        raise BigtrainError(f"{where}: architectures {archs} is not supported (expected ['LlamaForCausalLM'])")
    if hf.get("hidden_act", "silu") != "silu":
        raise BigtrainError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (expected 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise BigtrainError(f"{where}: {key}=true is not supported (bigtrain's Llama has no biases)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise BigtrainError(f"{where}: rope type {rope.get('rope_type') or rope.get('type')!r} is not supported "
                            "(expected 'default')")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    try:
        d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        cfg = ModelConfig(n_layers=int(hf["num_hidden_layers"]), d_model=d, n_heads=heads,
                          n_kv_heads=int(hf.get("num_key_value_heads") or heads),
                          ffn_hidden=int(hf["intermediate_size"]), vocab_size=int(hf["vocab_size"]),
                          seq_len=int(hf.get("max_position_embeddings", 2048)),
                          tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=float(theta),
                          norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                          init_std=float(hf.get("initializer_range", 0.02)))
    except KeyError as e:
        raise BigtrainError(f"{where}: field {e.args[0]!r} is missing") from None
    if hf.get("head_dim") not in (None, d // heads):
        raise BigtrainError(f"{where}: head_dim={hf['head_dim']} is not hidden_size/num_attention_heads={d // heads}")
    try:
        cfg.validate()
    except BigtrainError as e:
        raise BigtrainError(f"{where}: {e}") from None
    return cfg


# ------------------------------------------------------------------------------------------- weights
def save_sharded(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(_progress(shards, "writing shards"), 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))


def fixed_batch(vocab: int, seq: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def compare_logits(hf_dir: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> float:
    """Max |logits difference| on a fixed batch, bigtrain (weights rounded to ``dtype``) vs transformers."""
    from transformers import LlamaForCausalLM

    from bigtrain.generate.inference import build_model

    rounded = {k: v.to(dtype).float() for k, v in weights.items()}
    ours = build_model(cfg, rounded)
    hf = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    tokens = fixed_batch(cfg.vocab_size, min(cfg.seq_len, 32))
    with torch.no_grad():
        a = ours(tokens).float()
        b = hf(tokens).logits.float()
    return float((a - b).abs().max())


def export_hf(input: str | Path, output: str | Path, dtype: str = "fp32", tokenizer: str | Path | None = None,
              max_shard_size: int = 2 * 1024**3, check: bool = True, force: bool = False) -> dict[str, Any]:
    from transformers import GenerationConfig

    from bigtrain.tokenizer import load_tokenizer

    if dtype not in DTYPES:
        raise BigtrainError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    weights, meta, ckpt = read_weights(input)
    cfg = model_config(meta, ckpt)
    tok_path = Path(tokenizer) if tokenizer else (ckpt / meta["tokenizer"] if meta.get("tokenizer") else None)
    tok = load_tokenizer(tok_path) if tok_path is not None else None
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise BigtrainError(f"{tok_path}: tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                            f"{cfg.vocab_size} (model.vocab_size)")
    names = L.to_hf_names(cfg)
    tdtype = DTYPES[dtype]
    hf_tensors = {names[k]: weights[k].to(tdtype) for k in L.expected_shapes(cfg)}
    report: dict[str, Any] = {"dtype": dtype}
    with atomic_dir(output, force=force) as tmp:
        conf = hf_config(cfg, tok)
        conf.dtype = "bfloat16" if dtype == "bf16" else "float32"
        conf.save_pretrained(str(tmp))
        GenerationConfig(bos_token_id=conf.bos_token_id, eos_token_id=conf.eos_token_id,
                         pad_token_id=conf.pad_token_id, do_sample=False,
                         max_length=cfg.seq_len).save_pretrained(str(tmp))
        save_sharded(hf_tensors, tmp, max_shard_size)
        if tok is not None:
            write_hf_tokenizer(Path(tok.path) / "tokenizer.model" if Path(tok.path).is_dir() else Path(tok.path),
                               tmp, cfg.seq_len)
            check_hf_tokenizer(tmp, tok)
        if check:
            diff = compare_logits(tmp, cfg, weights, tdtype)
            report["max_logit_diff"] = diff
            if not diff <= LOGIT_TOL:
                raise BigtrainError(f"{output}: exported model's logits differ from bigtrain's by {diff:.3g} "
                                    f"(tolerance {LOGIT_TOL}); export refused")
        (tmp / "bigtrain_export.json").write_text(json.dumps(
            {"source": str(ckpt), "step": meta.get("step"), **report}, indent=2))
    return report


# ------------------------------------------------------------------------------------------- import
def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    from bigtrain.convert.checkpoint_io import load_safetensors

    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            raise BigtrainError(f"{index}: not a valid safetensors index (no weight_map)") from None
        out = {}
        for f in _progress(files, "reading shards"):
            if not (hf_dir / f).is_file():
                raise BigtrainError(f"{hf_dir}: {f} is missing (listed in {index.name})")
            out.update(load_safetensors(hf_dir / f))
        return out
    if (hf_dir / "model.safetensors").is_file():
        return load_safetensors(hf_dir / "model.safetensors")
    if (hf_dir / "pytorch_model.bin").is_file():
        return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise BigtrainError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def hf_to_canonical(hf_weights: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    names = L.to_hf_names(cfg)
    shapes = L.expected_shapes(cfg)
    out = {}
    for ours, theirs in names.items():
        if theirs not in hf_weights:
            raise BigtrainError(f"{where}: tensor {theirs} is missing")
        t = hf_weights[theirs]
        if tuple(t.shape) != shapes[ours]:
            raise BigtrainError(f"{where}: tensor {theirs} has shape {tuple(t.shape)}, expected {shapes[ours]}")
        out[ours] = t.float().contiguous()
    allowed = set(names.values()) | {"lm_head.weight"}
    extra = [k for k in hf_weights if k not in allowed and "rotary_emb" not in k]
    if extra:
        raise BigtrainError(f"{where}: unexpected tensor {extra[0]}")
    return out


def check_import_tokenizer(hf_dir: Path, tokenizer: str | Path | None, cfg: ModelConfig) -> None:
    """Fail before any heavy work if the tokenizer does not fit the vocabulary."""
    import tempfile as _t

    with _t.TemporaryDirectory() as tmp:
        import_tokenizer(hf_dir, tokenizer, cfg, Path(tmp))


def import_tokenizer(hf_dir: Path, tokenizer: str | Path | None, cfg: ModelConfig, dest: Path) -> bool:
    """Copy a sentencepiece tokenizer (``--tokenizer`` or HF_DIR/tokenizer.model) into ``dest/tokenizer``."""
    from bigtrain.checkpoint.manager import TOKENIZER_SUBDIR
    from bigtrain.io import atomic_write_json
    from bigtrain.tokenizer import load_tokenizer
    from bigtrain.tokenizer.model import Tokenizer

    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        src = tok.path if tok.path.is_dir() else tok.path.parent
    elif (hf_dir / "tokenizer.model").is_file():
        model_file = hf_dir / "tokenizer.model"
        tok = Tokenizer(model_file.read_bytes(), {}, model_file)
        src = None
    else:
        return False
    if tok.vocab_size > cfg.vocab_size:
        raise BigtrainError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens but config.json vocab_size="
                            f"{cfg.vocab_size}")
    out = dest / TOKENIZER_SUBDIR
    if src is not None:
        shutil.copytree(src, out, dirs_exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.model").write_bytes(tok.model_bytes)
        atomic_write_json(out / "tokenizer.json", {"type": "sentencepiece", "vocab_size": tok.vocab_size,
                                                   "unk_id": tok.unk_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                                                   "pad_id": tok.pad_id, "sha256": tok.sha256,
                                                   "imported_from": str(hf_dir)})
    return True


def import_hf(input: str | Path, output: str | Path, tp: int = 1, pp: int = 1, dp: int = 1,
              zero_stage: int | None = None, tokenizer: str | Path | None = None, to: str | None = None,
              base_config: dict[str, Any] | None = None, force: bool = False) -> Path:
    from bigtrain.config.job import JobConfig, load_job_config
    from bigtrain.convert.checkpoint_io import CONSOLIDATED, write_consolidated, write_meta
    from bigtrain.convert.engine import write_native

    hf_dir = Path(input)
    if not hf_dir.is_dir():
        raise BigtrainError(f"{hf_dir}: no such Hugging Face model directory")
    conf_file = hf_dir / "config.json"
    if not conf_file.is_file():
        raise BigtrainError(f"{hf_dir}: config.json is missing")
    hf = read_json(conf_file)
    cfg = model_config_from_hf(hf, str(conf_file))
    check_import_tokenizer(hf_dir, tokenizer, cfg)
    weights = hf_to_canonical(read_hf_weights(hf_dir), cfg, str(hf_dir))
    data = dict(base_config or JobConfig().to_dict())
    data["model"] = cfg.to_dict()
    zero = zero_stage if zero_stage is not None else (1 if pp > 1 else data.get("parallel", {}).get("zero_stage", 1))
    data["parallel"] = {**data.get("parallel", {}), "tp": tp, "pp": pp, "zero_stage": zero}
    data["tokenizer"] = None
    try:
        job = load_job_config(None, [], base=data)
        job.check_world(tp * pp * dp)
    except BigtrainError as e:
        raise BigtrainError(f"{conf_file}: cannot lay out this model as tp={tp} pp={pp}: {e}") from None
    with atomic_dir(output, force=force) as tmp:
        has_tok = import_tokenizer(hf_dir, tokenizer, cfg, tmp)
        meta = {"config": job.to_dict(), "step": 0, "loader": {"consumed_samples": 0}, "consumed_tokens": 0,
                "consumed_samples": 0, "tokenizer": "tokenizer" if has_tok else None, "imported_from": str(hf_dir)}
        if to == CONSOLIDATED:
            meta.update(format=CONSOLIDATED, layout={"tp": 1, "pp": 1, "dp": 1, "zero_stage": None})
            write_consolidated(tmp, weights, meta)
            write_meta(tmp, meta)
        else:
            meta["layout"] = {"tp": tp, "pp": pp, "dp": dp, "zero_stage": job.parallel.zero_stage_at(dp, job.train.precision)}
            with tempfile.TemporaryDirectory(prefix="bigtrain-import-", dir=tmp.parent) as stage:
                write_native(tmp, weights, None, job.to_dict(), dp, Path(stage))
            write_meta(tmp, meta)
    return Path(output)
