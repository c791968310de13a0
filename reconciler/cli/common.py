"""What every subcommand shares: exit codes and the ``Subcommand`` entry."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

SPEC_SUFFIX = ".toml"
"""``reconciler.spec.SPEC_SUFFIX``, here so that building the parser imports no pydantic
(a test keeps the two equal)."""


def _resolve(reference: str) -> Callable[..., Any]:
    """``"status:cmd_status"`` -> ``reconciler.cli.status.cmd_status``, imported now."""
    module, _, name = reference.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(f"reconciler.cli.{module}"), name)
    return found


class Subcommand:
    """One ``reconciler NAME ...`` command.

    Its functions are named, as ``"module:function"`` in ``reconciler.cli``, and
    imported only when that command runs or its arguments are declared: a client
    command imports its own module, not every command's.
    """

    __slots__ = ("arguments", "command", "help", "name", "passthrough", "usage")

    def __init__(
        self,
        *,
        name: str,
        help: str,
        command: str,
        arguments: str | None = None,
        usage: str | None = None,
        passthrough: bool = False,
    ) -> None:
        self.name = name
        self.help = help
        self.command = command
        self.arguments = arguments
        self.usage = usage
        """Overrides argparse's usage line (needed when ``passthrough`` is set)."""
        self.passthrough = passthrough
        """Takes ``-- ARGS...``: everything after the first ``--`` lands, verbatim,
        in ``args.passthrough`` (a list; empty for commands without it)."""

    def run(self, args: argparse.Namespace) -> int:
        code: int = _resolve(self.command)(args)
        return code

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.arguments is not None:
            _resolve(self.arguments)(parser)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))
