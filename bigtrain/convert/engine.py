"""Optimizer-carrying conversion through DeepSpeed's own engine.

Why this route: DeepSpeed stores fp32 master weights and Adam moments as flat, padded, per-group partitions
whose format differs between ZeRO 0, 1/2 (also under the pipeline engine) and 3. Rather than parse and
re-create those files offline, a converter process group is started in the *source* layout: it builds the same
engine the trainer builds, loads the checkpoint with ``engine.load_checkpoint`` and reads every parameter's
full fp32 value and Adam moments with ``deepspeed.utils.safe_get_full_fp32_param`` /
``safe_get_full_optimizer_state`` (the parameter's tensor-parallel shard, gathered over data parallelism).
The shards are merged into canonical full tensors. A second process group in the *target* layout builds the
engine again, writes each rank's slice with ``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``
(plain parameters and ``optimizer.state`` under ZeRO 0), restores the Adam step, the LR scheduler and the
engine counters, and saves with ``engine.save_checkpoint``. The result is an ordinary checkpoint of the target
layout that ``bigtrain train`` resumes without any special flag. (Universal checkpointing needs a
``load_universal`` flag in the trainer and does not cover ZeRO 0.)

Run as ``python -m torch.distributed.run --nproc_per_node N -m bigtrain.convert.engine {dump,load} ...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bigtrain.errors import BigtrainError
from bigtrain.parallel.zero import has_fp32_master

OPT_KEYS = ("exp_avg", "exp_avg_sq")


# ------------------------------------------------------------------------------------------ parent side
def _run_world(nproc: int, args: list[str]) -> None:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "bigtrain.convert.engine", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if os.environ.get("BIGTRAIN_DEBUG_CONVERT"):
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "bigtrain: error:" in ln]
        if lines:
            raise BigtrainError(lines[-1].split("bigtrain: error:", 1)[1].strip())
        errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("[rank") and "Error" in ln]
        tail = "\n".join(errs[:4] or proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"conversion worker ({' '.join(args[:1])}, {nproc} processes) failed:\n{tail}")


def dump_full_state(ckpt: Path, meta: dict[str, Any], tmp: Path, with_optimizer: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``ckpt`` in its own layout and return (canonical fp32 weights, optimizer info).

    optimizer info: {"tensors": {name.exp_avg: ..., name.exp_avg_sq: ...}, "step", "lr_scheduler",
    "global_steps", "global_samples", "skipped_steps"}."""
    from bigtrain.convert import layout as L
    from bigtrain.convert.checkpoint_io import _progress, layout_of, model_config

    cfg = model_config(meta, ckpt)
    lay = layout_of(meta)
    nproc = int(lay["tp"]) * int(lay["pp"]) * int(lay.get("dp") or 1)
    _run_world(nproc, ["dump", str(ckpt), str(tmp), "1" if with_optimizer else "0"])
    tp = int(lay["tp"])
    parts: dict[str, list] = {}
    files = sorted(tmp.glob("shard_tp*_pp*.pt"))
    for f in _progress(files, "merging shards"):
        t = int(f.name.split("_tp")[1].split("_pp")[0])
        for name, entry in torch.load(f, map_location="cpu", weights_only=False).items():
            parts.setdefault(name, [None] * tp)[t] = entry
    weights: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, shards in parts.items():
        weights[name] = L.merge([s["param"] for s in shards], name, cfg).contiguous()
        if with_optimizer and all(k in shards[0] for k in OPT_KEYS):
            for k in OPT_KEYS:
                tensors[f"{name}.{k}"] = L.merge([s[k] for s in shards], name, cfg).contiguous()
    extra = torch.load(tmp / "extra.pt", map_location="cpu", weights_only=False)
    info = dict(extra)
    info["tensors"] = tensors if with_optimizer else {}
    return weights, info


def write_native(out_tmp: Path, weights: dict[str, torch.Tensor], optim: dict[str, Any] | None,
                 config: dict[str, Any], dp: int, stage_dir: Path) -> None:
    """Build the engine of ``config``'s layout over ``tp*pp*dp`` processes, load the full state into it and
    save a DeepSpeed checkpoint into ``out_tmp`` (its files directly, no tag sub-directory left)."""
    from safetensors.torch import save_file

    stage_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(stage_dir / "model.safetensors"))
    extra = {}
    if optim:
        if optim.get("tensors"):
            save_file({k: v.contiguous() for k, v in optim["tensors"].items()}, str(stage_dir / "optimizer.safetensors"))
        extra = {k: v for k, v in optim.items() if k != "tensors"}
    torch.save(extra, stage_dir / "extra.pt")
    (stage_dir / "job.json").write_text(json.dumps(config))
    par = config.get("parallel", {})
    nproc = int(par.get("tp", 1)) * int(par.get("pp", 1)) * dp
    root = out_tmp.parent / f"{out_tmp.name}.ds"
    _run_world(nproc, ["load", str(stage_dir), str(root), "ckpt"])
    src = root / "ckpt"
    out_tmp.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        os.replace(f, out_tmp / f.name)
    import shutil

    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ worker side
def _build_engine(job):
    import warnings

    warnings.filterwarnings("ignore")
    from bigtrain.train.trainer import build_engine

    built = build_engine(job)
    return built.engine, built.topo


def _base_optimizer(engine):
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else opt


def _link_optimizer_state(engine, create_step: float | None = None) -> None:
    """Make sure every flat fp32 partition has Adam state (zeros when ``create_step`` is given and there is
    none yet) and that DeepSpeed's per-parameter views into it are linked (it links lazily at the first step)."""
    base = _base_optimizer(engine)
    if create_step is not None:
        for group in base.param_groups:
            for flat in group["params"]:
                if not base.state.get(flat):
                    base.state[flat] = {"step": torch.tensor(float(create_step)),
                                        "exp_avg": torch.zeros_like(flat, memory_format=torch.preserve_format),
                                        "exp_avg_sq": torch.zeros_like(flat, memory_format=torch.preserve_format)}
    opt = engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state") and all(base.state.get(f) for g in base.param_groups
                                                                     for f in g["params"]):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _worker_dump(ckpt: Path, out: Path, with_optimizer: bool) -> None:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from bigtrain.checkpoint.manager import CheckpointManager, read_meta
    from bigtrain.convert.checkpoint_io import job_from_meta

    meta = read_meta(ckpt)
    job = job_from_meta(meta, ckpt)
    engine, topo = _build_engine(job)
    CheckpointManager.load(engine, ckpt)
    base = _base_optimizer(engine)
    if with_optimizer:
        _link_optimizer_state(engine)
    shard: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in engine.module.named_parameters():
        entry = {}
        if has_fp32_master(p):
            entry["param"] = safe_get_full_fp32_param(p).detach().float().clone()
            if with_optimizer:
                for k in OPT_KEYS:
                    v = safe_get_full_optimizer_state(p, k)
                    if v is not None:
                        entry[k] = v.detach().float().clone()
        else:
            entry["param"] = p.detach().float().clone()
            if with_optimizer:
                state = base.state.get(p, {})
                for k in OPT_KEYS:
                    if k in state:
                        entry[k] = state[k].detach().float().clone()
        shard[name] = entry
    if topo.dp_rank == 0:
        torch.save(shard, out / f"shard_tp{topo.tp_rank}_pp{topo.pp_rank}.pt")
    if topo.rank == 0:
        step = 0.0
        for st in base.state.values():
            if "step" in st:
                step = float(st["step"])
                break
        extra = {"step": step, "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler else None,
                 "global_steps": engine.global_steps, "global_samples": engine.global_samples,
                 "skipped_steps": engine.skipped_steps}
        torch.save(extra, out / "extra.pt")
    torch.distributed.barrier()


def _worker_load(stage: Path, root: Path, tag: str) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors.torch import load_file

    from bigtrain.config.job import load_job_config
    from bigtrain.convert import layout as L

    job = load_job_config(None, [], base=json.loads((stage / "job.json").read_text()))
    engine, topo = _build_engine(job)
    weights = load_file(str(stage / "model.safetensors"))
    opt_file = stage / "optimizer.safetensors"
    optim = load_file(str(opt_file)) if opt_file.is_file() else {}
    extra = torch.load(stage / "extra.pt", weights_only=False)
    base = _base_optimizer(engine)
    step = float(extra.get("step", 0.0))
    if any(has_fp32_master(p) for p in engine.module.parameters()):
        _link_optimizer_state(engine, create_step=step)
    for name, p in engine.module.named_parameters():
        if name not in weights:
            raise BigtrainError(f"{stage}: tensor {name} is missing")
        local = L.shard(weights[name], name, topo.tp, topo.tp_rank, job.model)
        moments = {k: L.shard(optim[f"{name}.{k}"], name, topo.tp, topo.tp_rank, job.model) for k in OPT_KEYS
                   if f"{name}.{k}" in optim}
        if has_fp32_master(p):
            safe_set_full_fp32_param(p, local.float())
            for k in OPT_KEYS:
                safe_set_full_optimizer_state(p, moments.get(k, torch.zeros_like(local, dtype=torch.float32)), k)
            if hasattr(p, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    p.data.copy_(local.to(p.dtype))
            else:
                with torch.no_grad():
                    p.data.copy_(local.to(p.dtype))
        else:
            with torch.no_grad():
                p.data.copy_(local.to(p.dtype))
            if moments:
                base.state[p] = {"step": torch.tensor(step), **{k: v.clone().float() for k, v in moments.items()}}
    # The Adam step count (DeepSpeed's ZeRO optimizer took one zero-gradient step to create its state).
    for st in base.state.values():
        if "step" in st:
            st["step"] = torch.tensor(step) if torch.is_tensor(st["step"]) else step
    if extra.get("lr_scheduler") and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(extra["lr_scheduler"])
    for k in ("global_steps", "global_samples", "skipped_steps"):
        if k in extra:
            setattr(engine, k, extra[k])
    step_tag = int(extra.get("global_steps", 0))
    engine.save_checkpoint(str(root), tag=tag, client_state={"bigtrain_step": step_tag}, save_latest=False)
    torch.distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[0] == "dump":
            _worker_dump(Path(argv[1]), Path(argv[2]), argv[3] == "1")
        elif argv[0] == "load":
            _worker_load(Path(argv[1]), Path(argv[2]), argv[3])
        else:
            raise SystemExit(f"unknown mode {argv[0]}")
    except BigtrainError as e:
        print(f"bigtrain: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if torch.distributed.is_initialized():
            try:
                from bigtrain.parallel.topology import teardown

                teardown()
                torch.distributed.destroy_process_group()
            except Exception:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
