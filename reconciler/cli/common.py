"""What every subcommand shares: exit codes and the ``Subcommand`` entry."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

SPEC_SUFFIX = ".toml"
"""``reconciler.spec.SPEC_SUFFIX``, here so that building the parser imports no pydantic
(a test keeps the two equal)."""


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One ``reconciler NAME ...`` command."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    usage: str | None = None
    """Overrides argparse's usage line (needed when ``passthrough`` is set)."""
    passthrough: bool = False
    """Takes ``-- ARGS...``: everything after the first ``--`` lands, verbatim,
    in ``args.passthrough`` (a list; empty for commands without it)."""


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))
