"""The ``bigtrain`` console script: one subcommand per stage of the flow.

Each stage module exposes ``register(subparsers)``, which adds its parser and sets ``func``. Heavy
imports (torch, deepspeed, ray) happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bigtrain import __version__, quiet
from bigtrain.errors import BigtrainError

COMMAND_MODULES = [
    "bigtrain.tokenizer.cli",
    "bigtrain.data.cli",
    "bigtrain.train.cli",
    "bigtrain.eval.cli",
    "bigtrain.finetune.cli",
    "bigtrain.convert.cli",
    "bigtrain.generate.cli",
    "bigtrain.launch.cli",
    "bigtrain.plan.cli",
]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, like every other bad input."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bigtrain", description="Pretrain language models from raw text "
                                     "to a Hugging Face checkpoint.")
    parser.add_argument("--version", action="version", version=f"bigtrain {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the third-party warnings bigtrain hides as known-harmless (bigtrain/quiet.py); "
                        "BIGTRAIN_VERBOSE=1 does the same, for every rank a launcher starts")
    # The deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK carries the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # Overrides (key=value) may come after options such as --run-dir, which argparse's positional
    # handling does not allow for on its own.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    quiet.install(args.verbose)
    try:
        code = args.func(args)
    except BigtrainError as e:
        print(f"bigtrain: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bigtrain: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
