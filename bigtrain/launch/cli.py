"""``bigtrain launch``: start training through a cluster framework.

``bigtrain launch ray-train CONFIG --run-dir DIR --num-workers N`` runs the bigtrain trainer on N Ray Train
workers (one per GPU, or one per process on CPU). SLURM and the deepspeed / torchrun launchers need no
subcommand here: they start ``bigtrain train`` directly (see cluster/slurm/ and cluster/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path


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

    n = launch_sub.add_parser(
        "ray-node", help="start one node of a per-job Ray cluster (free ports, IPv4 address, job token)",
        description="Start one Ray node for this job and exec `ray start --block`: every port Ray listens on "
                    "is picked free on this node (GCS, dashboard, client server, dashboard agent, metrics, "
                    "runtime-env agent, node and object manager, a block of worker ports), the node's IPv4 "
                    "address is found (not 127.x, not IPv6), the job's token comes from RAY_AUTH_TOKEN (or a "
                    "0600 file in RAY_AUTH_TOKEN_PATH). The head writes its address and ports to --info-file "
                    "(shared storage); a worker reads it (waiting up to RAY_JOIN_TIMEOUT s, default 300).")
    role = n.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head (GCS, dashboard on 127.0.0.1)")
    role.add_argument("--worker", action="store_true", help="join the head named in --info-file")
    n.add_argument("--info-file", required=True, metavar="FILE", help="head address/ports (JSON) on shared storage")
    n.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may schedule on (default: Ray's count)")
    n.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: Ray's count)")
    n.add_argument("--node-ip-address", default=None, metavar="IP", help="this node's IPv4 address")
    n.add_argument("--interface", default=None, metavar="IF", help="take the node's address from this interface")
    n.add_argument("--temp-dir", default=None, metavar="DIR",
                   help="node-local Ray temp dir (default /tmp/bt-ray-JOB-HOST; keep it short)")
    n.add_argument("--job-id", default=os.environ.get("SLURM_JOB_ID", ""), metavar="ID",
                   help="names the temp dir and picks the worker port block (default $SLURM_JOB_ID)")
    n.add_argument("--worker-ports", type=int, default=512, metavar="N",
                   help="ports for Ray's worker processes, one block out of 10000-31999 (default 512)")
    n.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard / job API bind address (head)")
    n.set_defaults(func=_ray_node)

    w = launch_sub.add_parser(
        "ray-wait", help="wait until a per-job Ray cluster has all its nodes; print its address",
        description="Wait until the cluster whose head wrote --info-file counts --nodes live nodes, then print "
                    "its GCS address (HOST:PORT). Fails with one line and exit 1 when that takes longer than "
                    "--timeout (default RAY_JOIN_TIMEOUT, else 300 s) or when a --watch-pid process exits.")
    w.add_argument("--info-file", required=True, metavar="FILE")
    w.add_argument("--nodes", type=int, required=True, metavar="N")
    w.add_argument("--timeout", type=float, default=None, metavar="S")
    w.add_argument("--watch-pid", type=int, action="append", default=[], metavar="PID",
                   help="fail as soon as this process (e.g. a node's srun step) exits; repeatable")
    w.add_argument("--field", default="address", help="which field of the info file to print (default address)")
    w.set_defaults(func=_ray_wait)

    def _no_launcher(args):
        p.print_help()
        return 2

    p.set_defaults(func=_no_launcher)


def _ray_node(args) -> int:
    from bigtrain.launch.ray_node import start_node

    start_node(head=args.head, info_file=Path(args.info_file), num_cpus=args.num_cpus, num_gpus=args.num_gpus,
               node_ip_address=args.node_ip_address, interface=args.interface, temp_dir=args.temp_dir,
               job_id=args.job_id, worker_ports=args.worker_ports, dashboard_host=args.dashboard_host)
    return 1  # not reached: start_node execs ray


def _ray_wait(args) -> int:
    from bigtrain.launch.ray_node import wait_for_nodes

    info = wait_for_nodes(Path(args.info_file), args.nodes, timeout=args.timeout, watch_pids=args.watch_pid)
    print(info[args.field] if args.field in info else info["ports"][args.field], flush=True)
    return 0


def _ray_train(args) -> int:
    from bigtrain.launch.ray_train import run_ray_train

    return run_ray_train(args.config, list(args.overrides), args.run_dir, num_workers=args.num_workers,
                         max_failures=args.max_failures, ray_address=args.ray_address,
                         cpus_per_worker=args.cpus_per_worker)
