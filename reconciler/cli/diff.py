"""``reconciler diff``: what applying a spec tree would do, before it is applied.

Two modes, one decider (``plan()``): against the running daemon, which plans
the given files against what it observes (``POST /api/v1/plan``); or, with
``--from OLD_DIR``, against a host that runs exactly the specs of OLD_DIR, with
no daemon at all — a GitOps review of "main" against a pull request. Exit codes
as ``kubectl diff``: 0 no difference, 1 differences, 2 an error (an invalid spec
file, named with its key and reason; no daemon to ask).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from reconciler.cli.client import ApiFailure, Client, ClientFailure, socket_argument
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, print_json

EXIT_DIFFERENCES = EXIT_ERROR
EXIT_TROUBLE = EXIT_USAGE
"""``kubectl diff``'s convention: 2 for an error, so 1 can mean "there are differences"."""


def diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        type=Path,
        help="the spec tree to apply (default: the daemon's specs directory as it is now)",
    )
    parser.add_argument(
        "--from",
        dest="old",
        metavar="OLD_DIR",
        type=Path,
        help="compare with a host running exactly OLD_DIR's specs; no daemon needed",
    )
    parser.add_argument("--json", action="store_true", help="print the lines as JSON")
    socket_argument(parser)


def _read_tree(directory: Path) -> tuple[dict[str, bytes], list[str]]:
    """Every spec file of DIR as the daemon would see it, and every problem, named."""
    from reconciler.source.scan import Scanner

    # The scanner logs what it refuses; here every problem is printed once, below.
    logging.getLogger("reconciler.source").addHandler(logging.NullHandler())
    snapshot = Scanner(directory, require_safe_permissions=False).scan()
    # Problems name the file within its tree; with two trees, say which.
    problems = [
        line if line.startswith(str(directory)) else f"{directory / line}"
        for problem in snapshot.problems.values()
        for line in problem.problems
    ]
    files = {}
    for loaded in snapshot.specs.values():
        try:
            files[loaded.path.name] = loaded.path.read_bytes()
        except OSError as exc:
            problems.append(f"{loaded.path}: cannot read: {exc.strerror or exc}")
    return files, problems


def _offline(old: Path, new: Path) -> list[dict[str, Any]]:
    from reconciler.loop import desired_from_files
    from reconciler.plan.diff import diff, observed_from

    trees = []
    for directory in (old, new):
        files, problems = _read_tree(directory)
        if problems:
            raise _Refused(problems)
        trees.append(desired_from_files(files))
    before, after = trees
    return [line.to_json() for line in diff(after, observed_from(before), 0.0)]


def _live(args: argparse.Namespace) -> list[dict[str, Any]]:
    body: dict[str, object] = {}
    if args.dir is not None:
        files, problems = _read_tree(args.dir)
        if problems:
            raise _Refused(problems)
        body["files"] = {name: data.decode() for name, data in files.items()}
    with Client(args.socket) as client:
        answer = client.call("POST", "/plan", json_body=body)
    actions: list[dict[str, Any]] = answer.get("actions", [])
    return actions


class _Refused(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def cmd_diff(args: argparse.Namespace) -> int:

    if args.old is not None and args.dir is None:
        print("reconciler diff: --from OLD_DIR needs DIR, the tree to compare", file=sys.stderr)
        return EXIT_TROUBLE
    try:
        lines = _offline(args.old, args.dir) if args.old is not None else _live(args)
    except _Refused as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_TROUBLE
    except (ClientFailure, ApiFailure) as exc:
        print(exc, file=sys.stderr)
        return EXIT_TROUBLE
    differences = sum(1 for line in lines if line["difference"])
    if args.json:
        print_json({"differences": differences, "actions": lines})
    else:
        for line in lines:
            print(line["line"])
        noun = "collector" if differences == 1 else "collectors"
        print(
            f"{differences} {noun} would change" if differences else "no difference",
            file=sys.stderr,
        )
    return EXIT_DIFFERENCES if differences else EXIT_OK
