"""The ``reconciler`` command line: argument parsing and one function per subcommand.

Each subcommand is a ``Subcommand`` entry in ``SUBCOMMANDS``: a name, a help
line, a function that declares its arguments and a function that runs it and
returns the exit code. To add one (``run``, ``status``, ...), write those two
functions and append an entry; ``main`` needs no change.

Exit codes (DESIGN §7): 0 success; 1 an error, printed to stderr as
``FILE: KEY: reason`` lines for spec problems or ``CODE: message`` for other
``ReconcilerError``; 2 a usage error (argparse's own).

Reading and writing files happens here, never in ``reconciler.spec``, which
only turns bytes into models. The client commands (``status``, ``restart``,
``pause``, ``resume``, ``events``, ``wait``) talk JSON to a running daemon's
control socket (``reconciler.api``), found by ``--socket``, else
``$RECONCILER_SOCKET``, else ``/run/reconciler/api.sock``; one that cannot be
reached is a one-line message naming the socket, exit 1. The console script
``reconciler`` calls ``main``.

A client command's start-up is most of its round trip (``bench/status_cost.py``): the parser
of one command is built without the others' (``build_parser(only=...)``), and the errors
module (which imports typing) only when a command failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from reconciler import __version__
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, HelpFormatter, Subcommand

# --- registry and dispatch ------------------------------------------------------------

SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        name="run",
        help="the daemon: keep processes equal to the spec directory (foreground, logs to stderr)",
        arguments="files:_run_arguments",
        command="files:cmd_run",
    ),
    Subcommand(
        name="validate",
        help="check spec files or directories; exit 1 naming file, key and reason",
        arguments="files:_validate_arguments",
        command="files:cmd_validate",
    ),
    Subcommand(
        name="schema",
        help="print the JSON Schema of spec files (for editors and CI linting)",
        command="files:cmd_schema",
    ),
    Subcommand(
        name="new",
        help="print or write a valid starter spec",
        arguments="files:_new_arguments",
        command="files:cmd_new",
        usage="%(prog)s ID [--type T] [--binary B] [-o FILE] [--force] [-- ARGS...]",
        passthrough=True,
    ),
    Subcommand(
        name="status",
        help="table of collectors: id, type, desired, state, health, pid, uptime, restarts, "
        "error; with ID, one in detail",
        arguments="status:_status_arguments",
        command="status:cmd_status",
    ),
    Subcommand(
        name="restart",
        help="gracefully restart a collector now",
        arguments="status:_action_arguments",
        command="status:cmd_restart",
    ),
    Subcommand(
        name="pause",
        help="pause a collector (SIGSTOP) until resumed or its spec file changes",
        arguments="status:_action_arguments",
        command="status:cmd_pause",
    ),
    Subcommand(
        name="resume",
        help="resume a paused collector",
        arguments="status:_action_arguments",
        command="status:cmd_resume",
    ),
    Subcommand(
        name="reload",
        help="reload the config file and rescan the specs now; exit 1 naming a refused key",
        arguments="client:socket_argument",
        command="status:cmd_reload",
    ),
    Subcommand(
        name="events",
        help="recent events, oldest first: what was done, when and why",
        arguments="status:_events_arguments",
        command="status:cmd_events",
    ),
    Subcommand(
        name="diff",
        help="what applying these spec files would do (start, restart, update in place, "
        "stop, keep), from the daemon's own plan(); exit 0 no difference, 1 differences, 2 error",
        arguments="diff:diff_arguments",
        command="diff:cmd_diff",
    ),
    Subcommand(
        name="wait",
        help="block until converged: exit 0 when every (named) collector runs its current "
        "spec in its desired state; 1 on timeout or failure, naming what is pending",
        arguments="wait:_wait_arguments",
        command="wait:cmd_wait",
    ),
    Subcommand(
        name="logs",
        help="a collector's log file (log = \"file\"): all of the current run, the last N "
        "lines (-n), following it across rotation (-f), or the run before (--previous)",
        arguments="logs:_logs_arguments",
        command="logs:cmd_logs",
    ),
    Subcommand(
        name="crashes",
        help="crash records, oldest first: time, exit code or signal, run length, "
        "the last log lines, the core file; with ID, one collector's in full",
        arguments="crashes:crashes_arguments",
        command="crashes:cmd_crashes",
    ),
    Subcommand(
        name="completion",
        help="print a bash or zsh completion script for reconciler",
        arguments="completion:completion_arguments",
        command="completion:cmd_completion",
    ),
)


def build_parser(
    only: str | None = None, *, arguments: bool = True
) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, that command's alone (every other one is left out,
    and its module unimported): what running one command needs. Its help, usage and errors
    read the same: the top level's usage names ``COMMAND``, not the list of commands.
    ``arguments=False``: the commands without their arguments, enough for the top level's
    ``--help``, ``--version`` and errors (declaring ``run``'s imports pydantic)."""
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Declarative supervisor for collector processes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        if only is not None and subcommand.name != only:
            continue
        sub = commands.add_parser(
            subcommand.name,
            help=subcommand.help,
            description=subcommand.help,
            usage=subcommand.usage,
            formatter_class=HelpFormatter,
        )
        if arguments:
            subcommand.add_arguments(sub)
        sub.set_defaults(subcommand=subcommand)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; exits with 2 (argparse) on a usage error."""
    by_name = {subcommand.name: subcommand for subcommand in SUBCOMMANDS}
    cut = argv.index("--") if "--" in argv else len(argv)
    words = [arg for arg in argv[:cut] if not arg.startswith("-")]
    if words and words[0] in by_name:
        parser = build_parser(words[0])
    else:
        # No command (`reconciler --version`, `-h`, or none): nothing can parse past the top
        # level; but after a "--" a command may still follow.
        parser = build_parser(arguments=cut < len(argv) or bool(words))
    # argparse cannot take "ID --type T -- ARGS": a "*" positional is consumed,
    # empty, at the ID, and what follows "--" is then "unrecognized". So for a
    # passthrough command the tail is cut off before parsing.
    if cut < len(argv) and words and words[0] in by_name and by_name[words[0]].passthrough:
        args = parser.parse_args(argv[:cut])
        args.passthrough = argv[cut + 1 :]
    else:
        args = parser.parse_args(argv)
        args.passthrough = []
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    subcommand: Subcommand = args.subcommand
    try:
        return subcommand.run(args)
    except BrokenPipeError:
        # `reconciler schema | head`: the reader left. Python would print a
        # traceback at exit flushing stdout; point it at /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """A ``ReconcilerError`` as lines on stderr (exit 1); anything else goes on up. The errors
    module is imported here, not at start-up: a command that succeeds never needs it."""
    from reconciler.errors import InvalidSpec, ReconcilerError

    if isinstance(exc, InvalidSpec):
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_ERROR
    if isinstance(exc, ReconcilerError):
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    raise exc
