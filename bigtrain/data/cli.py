"""Subcommands of this stage (filled in by the data-pipeline work)."""


def register(sub) -> None:
    pass
