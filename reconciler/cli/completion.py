"""``reconciler completion bash|zsh``: a shell completion script, generated from the parser.

The script is made by shtab from ``reconciler.cli.build_parser()``, the parser
``main`` runs, so every subcommand and flag completes as it is defined, with
nothing to keep in step by hand. Options that take a file or a directory
(metavar ``FILE``, ``PATH``, ``DIR``) complete paths. shtab is imported only
here, when a script is asked for: the other commands do not pay for it.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.common import EXIT_OK
from reconciler.cli.logs import EpilogFormatter

SHELLS = ("bash", "zsh")

EPILOG = """\
Install, for bash (needs the bash-completion package):
  reconciler completion bash > /etc/bash_completion.d/reconciler
  or, for one session: source <(reconciler completion bash)
for zsh (a directory on $fpath, before compinit runs):
  reconciler completion zsh > "${fpath[1]}/_reconciler"
"""


def completion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = EpilogFormatter
    parser.epilog = EPILOG
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete for")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script for ``args.shell``."""
    sys.stdout.write(completion_script(args.shell))
    return EXIT_OK


def completion_script(shell: str) -> str:
    """The completion script of the whole ``reconciler`` command for ``shell``."""
    import shtab

    from reconciler.cli import build_parser

    parser = build_parser()
    _complete_paths(parser, file=shtab.FILE, directory=shtab.DIRECTORY)
    script: str = shtab.complete(parser, shell=shell)
    return script if script.endswith("\n") else script + "\n"


def _complete_paths(
    parser: argparse.ArgumentParser, *, file: object, directory: object
) -> None:
    """Mark the arguments that name files or directories, on every subcommand.

    shtab reads a ``complete`` attribute on an action. The subcommands' argument
    functions know nothing of completion; their metavars say what they take.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub, file=file, directory=directory)
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if metavar.endswith("DIR"):
            action.complete = directory  # type: ignore[attr-defined]
        elif metavar in ("FILE", "PATH"):
            action.complete = file  # type: ignore[attr-defined]
