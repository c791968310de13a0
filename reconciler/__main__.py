"""The ``reconciler`` command (the console script, and ``python -m reconciler``).

``reconciler run`` first starts again under ``python -OO`` where the interpreter has that
bytecode at hand (:func:`reconciler.imports.optimised_command`): a long-lived daemon has no
use for docstrings, 1.3 MiB of its memory with 200 collectors. This module imports nothing
else before it decides, so that starting again costs one interpreter start-up and no more.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    """Run the command line (``reconciler.cli.main``), after starting again if worth it."""
    if sys.argv[1:2] == ["run"]:
        from reconciler.imports import optimised_command

        command = optimised_command()
        if command is not None:
            try:
                os.execv(command[0], command)
            except OSError:
                pass  # run as this interpreter is: the same daemon, with its docstrings
    from reconciler.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
