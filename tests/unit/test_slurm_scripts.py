"""The SLURM batch scripts as run inside a 2-node x 8-GPU allocation, with stand-ins for srun / scontrol /
scancel / sinfo on PATH: the environment is what sbatch sets from the scripts' #SBATCH lines and the
command-line options, and the stand-ins record what the scripts ask of SLURM. The real two-node runs are in
tests/e2e/test_slurm.py; these check what a 2 x 8 GPU job would be given, which no CPU machine can run.
The deepspeed case runs the real deepspeed launcher, whose `--launcher slurm` calls the srun stand-in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

SLURM = REPO / "cluster" / "slurm"
VENV_BIN = Path(sys.executable).parent
EXPAND = "gpu[001-002]"

# A stand-in records its argv and the SLURM/torch variables it saw, one JSON line per call.
STANDIN = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, sys, time
    name = os.path.basename(sys.argv[0])
    keep = ("SLURM_", "MASTER_", "OMP_", "CUDA_", "PYTHONPATH")
    with open(os.environ["STANDIN_LOG"], "a") as f:
        f.write(json.dumps({{"cmd": name, "argv": sys.argv[1:],
                            "env": {{k: v for k, v in os.environ.items() if k.startswith(keep)}}}}) + "\\n")
    if name == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
        sys.path.insert(0, {str(REPO)!r})
        print("\\n".join(__import__("tests.unit.test_slurm_scripts", fromlist=["x"]).expand(sys.argv[3])))
    if name == "srun" and os.environ.get("STANDIN_SRUN_WAIT"):
        import signal
        def stop(*a):  # as the trainer does: the record of a save at the signal (unless told not to), then 143
            if os.environ.get("STANDIN_RUN_DIR"):
                with open(os.path.join(os.environ["STANDIN_RUN_DIR"], ".bigtrain-stopped"), "w") as f:
                    f.write(f"job={{os.environ['SLURM_JOB_ID']}} attempt=0 step=7 signal=15\\n")
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        with open(os.environ["STANDIN_SRUN_WAIT"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.environ["STANDIN_SRUN_WAIT"] + ".tmp", os.environ["STANDIN_SRUN_WAIT"])
        time.sleep(60)
        sys.exit(1)
    sys.exit(int(os.environ.get("STANDIN_RC_" + name, "0")))
""")


def expand(nodelist: str) -> list[str]:
    """What `scontrol show hostnames` prints for the host lists used here (one bracket group per item)."""
    out = []
    for item in re.findall(r"[^,\[]+(?:\[[^]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^]]*)\](.*)", item)
        if not m:
            out.append(item)
            continue
        for r in m.group(2).split(","):
            lo, _, hi = r.partition("-")
            out += [f"{m.group(1)}{i:0{len(lo)}d}{m.group(3)}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def sbatch_defaults(script: Path) -> dict[str, str]:
    opts = {}
    for line in script.read_text().splitlines():
        m = re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line)
        if m:
            opts[m.group(1)] = m.group(2) or ""
    return opts


def allocation_env(opts: dict[str, str], job_id: int = 4242) -> dict[str, str]:
    """The variables sbatch sets for the batch shell of an allocation with these options."""
    nodes = int(opts.get("nodes", "1"))
    per_node = int(opts.get("ntasks-per-node", "1"))
    nodelist = f"gpu[001-{nodes:03d}]" if nodes > 1 else "gpu001"
    env = {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
           "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NTASKS": str(nodes * per_node),
           "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_CPUS_PER_TASK": opts.get("cpus-per-task", "1"),
           "SLURM_SUBMIT_DIR": "/home/user"}
    if opts.get("gpus-per-node", "0") != "0":
        env["SLURM_GPUS_PER_NODE"] = opts["gpus-per-node"]
        env["SLURM_GPUS_ON_NODE"] = opts["gpus-per-node"]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(int(opts["gpus-per-node"]))))
    return env


def run_script(script: Path, args: list[str], opts: dict[str, str], tmp_path: Path, *, no_scontrol=False,
               extra_env: dict[str, str] | None = None, background=False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "scancel", "sinfo", *(() if no_scontrol else ("scontrol",))):
        p = bin_dir / name
        p.write_text(STANDIN)
        p.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    # Only the tools the scripts use besides SLURM's, so that a real scontrol on the machine stays out of sight.
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for t in ("head", "cat", "rm", "readlink", "dirname", "sleep", "od", "tr"):
        if not (tools / t).exists():
            (tools / t).symlink_to(shutil.which(t))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"PATH": f"{bin_dir}:{VENV_BIN}:{tools}", "STANDIN_LOG": str(log), "TMPDIR": str(tmp_path),
                "DS_ACCELERATOR": "cpu", **allocation_env(opts), **(extra_env or {})})
    cmd = [shutil.which("bash"), str(script), *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=tmp_path), log
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def _srun(calls):
    sruns = [c for c in calls if c["cmd"] == "srun"]
    assert len(sruns) == 1, calls
    return sruns[0]


def _opt(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name:
            return argv[i + 1]
    return None


@pytest.mark.parametrize("no_scontrol", [False, True], ids=["scontrol", "no-scontrol"])
def test_train_sbatch_on_two_nodes_of_eight_gpus(tmp_path, no_scontrol):
    script = SLURM / "train.sbatch"
    opts = {**sbatch_defaults(script), "nodes": "2"}
    proc, calls = run_script(script, ["configs/7b.yaml", "/shared/runs/7b"], opts, tmp_path, no_scontrol=no_scontrol)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    srun = _srun(calls)
    argv = srun["argv"]
    # One task per GPU on each node, CPUs passed on explicitly, a dead rank takes the step down.
    assert _opt(argv, "--ntasks") == "16" and _opt(argv, "--ntasks-per-node") == "8"
    assert _opt(argv, "--cpus-per-task") == "8" and "--kill-on-bad-exit=1" in argv
    assert argv[argv.index("train") + 1:] == ["configs/7b.yaml", "--run-dir", "/shared/runs/7b"]
    env = srun["env"]
    assert env["MASTER_ADDR"] == "gpu001" and env["MASTER_PORT"] == str(29500 + 4242 % 1000)
    assert env["OMP_NUM_THREADS"] == "8" and env["SLURM_GPUS_PER_NODE"] == "8"
    assert "training finished with exit code 0" in proc.stdout


@pytest.mark.parametrize("nodelist, first", [("gpu[007-010]", "gpu007"), ("n[2,5-6].c,m1", "n2.c"),
                                             ("login1", "login1"), ("a[09-11]-ib", "a09-ib")])
def test_train_sbatch_master_without_scontrol(tmp_path, nodelist, first):
    opts = {**sbatch_defaults(SLURM / "train.sbatch"), "nodes": "2"}
    proc, calls = run_script(SLURM / "train.sbatch", ["c.yaml", "/r"], opts, tmp_path, no_scontrol=True,
                             extra_env={"SLURM_JOB_NODELIST": nodelist})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _srun(calls)["env"]["MASTER_ADDR"] == first


def test_deepspeed_sbatch_runs_the_console_script_through_srun(tmp_path):
    launcher = VENV_BIN / "deepspeed"
    if not launcher.exists():
        pytest.skip("the deepspeed launcher is not installed")
    script = SLURM / "deepspeed.sbatch"
    opts = {**sbatch_defaults(script), "nodes": "2"}
    proc, calls = run_script(script, ["configs/7b.yaml", "/shared/runs/7b", "train.max_steps=10"], opts, tmp_path,
                             extra_env={"DEEPSPEED": str(launcher)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu001 slots=8\ngpu002 slots=8" in proc.stdout
    argv = _srun(calls)["argv"]
    # DeepSpeed's SlurmRunner: srun -n 16 <our srun args> --export=ALL,... python -u SCRIPT ARGS
    assert _opt(argv, "-n") == "16" and _opt(argv, "--ntasks-per-node") == "8"
    assert _opt(argv, "--cpus-per-task") == "8" and "--kill-on-bad-exit=1" in argv
    i = argv.index("-u")
    entry = argv[i + 1]
    assert os.path.isabs(entry) and argv[i + 2:] == ["train", "configs/7b.yaml", "--run-dir", "/shared/runs/7b",
                                                    "train.max_steps=10"]
    # The script works from any directory (DeepSpeed would otherwise run `python -u bigtrain`, a path).
    out = subprocess.run([argv[i - 1], "-u", entry, "--version"], capture_output=True, text=True, cwd="/",
                         timeout=120)
    assert out.returncode == 0 and "bigtrain" in out.stdout, out.stderr
    env = _srun(calls)["env"]
    assert env["MASTER_ADDR"] == "gpu001" and env["MASTER_PORT"] == str(29500 + 4242 % 1000)
    # SLURM's GPU list is left alone (DeepSpeed's local launcher would rewrite it).
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


@pytest.mark.parametrize("case", ["saved", "terminated", "no-requeue"])
@pytest.mark.parametrize("script", ["train.sbatch", "deepspeed.sbatch"])
def test_sigterm_to_the_batch_shell_reaches_every_rank_and_requeues(tmp_path, script, case):
    """A signal to the batch shell goes to every rank (scancel --signal: all steps, all nodes). Ranks that saved
    at it leave the trainer's record and the job requeues itself and exits 0 (with BIGTRAIN_NO_REQUEUE=1 it exits
    143 instead); ranks that ended 143 without it (srun terminating them after another rank failed) are a failure,
    never requeued."""
    saved = case != "terminated"
    opts = {**sbatch_defaults(SLURM / script), "nodes": "2"}
    ready = tmp_path / "srun-started"
    run = tmp_path / "run"
    run.mkdir()
    (run / ".bigtrain-stopped").write_text("job=4242 attempt=1 step=3 signal=15\n")  # an earlier attempt's
    proc, log = run_script(SLURM / script, ["c.yaml", str(run)], opts, tmp_path, background=True,
                           extra_env={"STANDIN_SRUN_WAIT": str(ready), "DEEPSPEED": str(VENV_BIN / "deepspeed"),
                                      "STANDIN_RUN_DIR": str(run) if saved else "",
                                      **({"BIGTRAIN_NO_REQUEUE": "1"} if case == "no-requeue" else {})})
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # the batch shell; SLURM's preemption signals every process
    calls = _wait_calls(log, lambda cs: any(c["cmd"] == "scancel" for c in cs))
    scancel = [c for c in calls if c["cmd"] == "scancel"][0]
    assert scancel["argv"] == ["--signal=TERM", "4242"]  # every step's tasks, on every node
    # scancel is a stand-in, so deliver what it would have: the srun stand-in stands for the ranks.
    os.kill(int(ready.read_text()), signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    requeued = ["requeue", "4242"] in [c["argv"] for c in calls if c["cmd"] == "scontrol"]
    if case == "saved":
        assert proc.returncode == 0 and requeued and "requeueing job 4242" in out, out  # not a failure
    elif case == "no-requeue":
        assert proc.returncode == 143 and not requeued and "requeueing" not in out, out
        assert "training finished" not in out, out  # stopped at the save, not failed
    else:
        assert proc.returncode == 143 and not requeued and "training finished with exit code 143" in out, out


def _wait_calls(log: Path, cond, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if cond(calls):
            return calls
        time.sleep(0.1)
    raise AssertionError(log.read_text() if log.exists() else "no calls")


README_SBATCH = re.compile(r"^[#\s]*(?:\w+=\S+\s+)*sbatch\s+(.*?cluster/slurm/(\w+)\.sbatch\s+.*)$", re.MULTILINE)


def readme_examples() -> list[tuple[str, str]]:
    out = []
    for doc in (REPO / "README.md", REPO / "cluster" / "README.md", SLURM / "train.sbatch", SLURM / "deepspeed.sbatch"):
        for m in README_SBATCH.finditer(doc.read_text().replace("\\\n", " ")):
            line = m.group(1).split("#")[0].strip()
            # the GPU examples (CPU-only ones say --gpus-per-node 0)
            if ("--nodes 2" in line or "--nodes=2" in line) and not re.search(r"--gpus-per-node[ =]0\b", line):
                out.append((f"{doc.name}: {line}", line))
    return out


def test_every_document_shows_a_two_node_example():
    assert {label.split(":")[0] for label, _ in readme_examples()} >= {"README.md", "train.sbatch", "deepspeed.sbatch"}


@pytest.mark.parametrize("label, line", readme_examples(), ids=[label for label, _ in readme_examples()])
def test_documented_two_node_examples_are_valid_for_two_by_eight(tmp_path, label, line):
    words = shlex.split(line)
    i = next(k for k, w in enumerate(words) if w.endswith(".sbatch"))
    script = REPO / words[i]
    opts = sbatch_defaults(script)
    k = 0
    while k < i:  # command-line options override the script's #SBATCH lines
        w = words[k].lstrip("-")
        if "=" in w:
            key, val = w.split("=", 1)
            k += 1
        else:
            key, val = w, words[k + 1]
            k += 2
        opts[{"N": "nodes"}.get(key, key)] = val
    assert opts["nodes"] == "2" and opts.get("gpus-per-node") == "8", (label, opts)
    assert opts["ntasks-per-node"] == "8", (label, opts)  # one rank per GPU
    config, run_dir, *overrides = words[i + 1:]
    extra = {"DEEPSPEED": str(VENV_BIN / "deepspeed")}
    proc, calls = run_script(script, [str(REPO / config), run_dir, *overrides], opts, tmp_path, extra_env=extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    argv = _srun(calls)["argv"]
    assert (_opt(argv, "--ntasks") or _opt(argv, "-n")) == "16"
    # The layout is valid for 16 ranks: the same checks `bigtrain train` makes at start-up.
    plan = subprocess.run([sys.executable, "-m", "bigtrain", "plan", str(REPO / config), "--nodes", "2",
                           "--gpus-per-node", "8", *overrides], capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, (label, plan.stdout + plan.stderr)


def test_ray_sbatch_refuses_fewer_cpus_than_training_workers_per_node(tmp_path):
    opts = {**sbatch_defaults(SLURM / "ray.sbatch"), "nodes": "2", "cpus-per-task": "2"}
    proc, calls = run_script(SLURM / "ray.sbatch", ["c.yaml", str(tmp_path / "run")], opts, tmp_path,
                             extra_env={"NUM_WORKERS": "6"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "bigtrain: 6 training workers on 2 node(s) need 3 CPUs per node (one each), the allocation has 2 "
        "(--cpus-per-task): raise --cpus-per-task or lower NUM_WORKERS"), proc.stderr
    assert not [c for c in calls if c["cmd"] == "srun"]  # refused before any node was started
