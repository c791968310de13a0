"""What every subcommand shares: exit codes, the ``Subcommand`` entry, the help formatter.

A client command's start-up is most of its round trip, so this module (and the rest of the
path of ``reconciler status``: ``reconciler``, ``reconciler.cli``, ``cli.client``,
``cli.status``) imports only what argparse and the request need at run time: not typing, not
the package's errors, nor pydantic, aiohttp or asyncio (``tests/unit/test_cli_imports.py``).
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False  # not typing's: its import costs ~4 ms (type checkers take the name)
if TYPE_CHECKING:
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
    qualified = f"reconciler.cli.{module}"
    __import__(qualified)  # not importlib.import_module: one package fewer to import
    found: Callable[..., Any] = getattr(sys.modules[qualified], name)
    return found


def terminal_columns(fallback: int = 80) -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (and bz2, lzma with
    it: ~2 ms): ``$COLUMNS``, else the terminal of stdout, else ``fallback``."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or fallback


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, given its width: argparse's own imports shutil to find it, and
    builds one formatter per argument declared (to check its metavar), help or not."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2  # as argparse does
        super().__init__(prog, indent_increment, max_help_position, width)


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
    import json

    print(json.dumps(data, indent=2))
