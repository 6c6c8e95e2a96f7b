"""``bigtrain launch``: start training through a cluster framework.

``bigtrain launch ray-train CONFIG --run-dir DIR --num-workers N`` runs the bigtrain trainer on N Ray Train
workers (one per GPU, or one per process on CPU). SLURM and the deepspeed / torchrun launchers need no
subcommand here: they start ``bigtrain train`` directly (see cluster/slurm/ and cluster/README.md).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("launch", help="run training through a cluster framework (Ray Train)",
                       description="Launch training through a cluster framework. SLURM batch scripts, the "
                                   "deepspeed launcher and torchrun start `bigtrain train` themselves: see "
                                   "cluster/README.md.")
    launch_sub = p.add_subparsers(dest="launcher", metavar="LAUNCHER")
    r = launch_sub.add_parser(
        "ray-train", help="train on Ray Train workers, restarting failed workers from the last checkpoint",
        description="Run `bigtrain train` on N Ray Train TorchTrainer workers (one per GPU, or one process "
                    "per worker on CPU). Every checkpoint is reported to Ray Train; when a worker fails, Ray "
                    "restarts the whole group (up to --max-failures times) and the trainer resumes from the "
                    "newest complete checkpoint in --run-dir, which therefore must be on storage every node "
                    "can read (a shared filesystem on multi-node clusters).")
    r.add_argument("config", help="YAML recipe, e.g. configs/tiny-cpu.yaml")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    r.add_argument("--run-dir", required=True, help="output directory (shared by all workers)")
    r.add_argument("--num-workers", type=int, required=True, metavar="N",
                   help="training processes (= world size; one per GPU on GPU clusters)")
    r.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="restarts of the worker group after a failure before giving up (default 3; -1: forever)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="existing Ray cluster (e.g. auto or HOST:6379); default: start a local one")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs reserved per worker (default 1)")
    r.set_defaults(func=_ray_train)

    def _no_launcher(args):
        p.print_help()
        return 2

    p.set_defaults(func=_no_launcher)


def _ray_train(args) -> int:
    from bigtrain.launch.ray_train import run_ray_train

    return run_ray_train(args.config, list(args.overrides), args.run_dir, num_workers=args.num_workers,
                         max_failures=args.max_failures, ray_address=args.ray_address,
                         cpus_per_worker=args.cpus_per_worker)
