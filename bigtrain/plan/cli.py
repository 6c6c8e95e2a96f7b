"""``bigtrain plan``: check a layout and estimate per-rank memory, step time and MFU before queueing."""

from __future__ import annotations

from bigtrain.errors import BigtrainError


def register(sub) -> None:
    p = sub.add_parser("plan", help="validate a parallel layout and estimate memory, step time and MFU",
                       description="Validate CONFIG's parallel layout for NODES × GPUS-PER-NODE ranks (the same "
                       "checks `bigtrain train` makes) and print per-rank memory (parameters, gradients, "
                       "optimizer state, activations) and an estimated step time and MFU, without starting "
                       "anything. Any config key can be overridden as key=value, e.g. parallel.tp=2.")
    p.add_argument("config", help="YAML recipe, e.g. configs/1b.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (ranks) per node (default 8)")
    p.add_argument("--gpu", default="H100", help="GPU model for peak FLOP/s and memory, e.g. H100, H200, A100 "
                   "(default H100)")
    p.add_argument("--efficiency", type=float, default=None,
                   help="assumed fraction of peak FLOP/s reached by the matrix multiplies (default 0.45)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from bigtrain.config.job import load_job_config
    from bigtrain.plan.estimate import DEFAULT_EFFICIENCY, format_plan, make_plan

    if args.nodes < 1 or args.gpus_per_node < 1:
        raise BigtrainError(f"--nodes {args.nodes} --gpus-per-node {args.gpus_per_node}: both must be at least 1")
    eff = DEFAULT_EFFICIENCY if args.efficiency is None else args.efficiency
    if not 0 < eff <= 1:
        raise BigtrainError(f"--efficiency {eff}: must be in (0, 1]")
    job = load_job_config(args.config, args.overrides)
    plan = make_plan(job, args.nodes, args.gpus_per_node, args.gpu, eff)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=1))
    else:
        print(format_plan(plan, args.config))
    return 0
