"""Known-harmless third-party noise, silenced in bigtrain's own processes; ``bigtrain --verbose`` (or
``BIGTRAIN_VERBOSE=1``, which launchers pass on to every rank) shows it all.

Only messages that say nothing about the run are listed, matched by their text, never whole categories:
a new warning from a dependency still shows. The libraries themselves are never edited.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

VERBOSE_ENV = "BIGTRAIN_VERBOSE"

KNOWN_WARNINGS: list[tuple[str, type[Warning]]] = [
    # megatron-core at import: it falls back to torch kernels, which is what bigtrain uses anyway
    ("Transformer Engine and Apex are not installed", UserWarning),
    # megatron-core's tensor-parallel layers, also on CPU, where there is no such setting to make
    ("When using async grad allreduce it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
     UserWarning),
    # megatron-core 0.16 deprecation notes about its own defaults (bigtrain sets up the default groups)
    (r"Warning: tp_group is None, using default tp group", DeprecationWarning),
]


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def install(show_all: bool | None = None) -> None:
    """Filter the known warnings (idempotent); ``show_all`` also sets the environment for child processes."""
    if show_all:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # transformers' "Loading weights" bars (it reads this when imported); bigtrain's own bars are tqdm's
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@contextlib.contextmanager
def quiet_stdout():
    """Swallow what a library prints to stdout (e.g. DeepSpeed's "… built successfully" on every start)."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
