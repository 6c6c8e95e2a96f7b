"""Subcommands of this stage (registered as they are built)."""


def register(sub) -> None:
    pass
