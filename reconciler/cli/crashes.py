"""``reconciler crashes [ID] [--json]``: the crash records the daemon kept.

Read from ``<state_dir>/crashes/`` directly (``--state-dir``, ``--config`` or
the default), as ``reconciler logs`` reads logs: no daemon is needed, so a
record is there to read even while the reconciler itself is down.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.client import human_duration, utc
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, print_json
from reconciler.cli.logs import _state_dir
from reconciler.crashes import CRASH_DIR_NAME, load


def crashes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", metavar="ID", help="only this collector's records")
    parser.add_argument("--json", action="store_true", help="the records as JSON, oldest first")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the reconciler's state_dir, where crashes/ is (default: from --config, "
        "else /var/lib/reconciler)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the reconciler's config file: its state_dir"
    )


def _how(record: dict[str, object]) -> str:
    if record.get("signal"):
        return f"signal {record['signal']}"
    return f"exit {record.get('exit_code')}"


def cmd_crashes(args: argparse.Namespace) -> int:
    directory = _state_dir(args) / CRASH_DIR_NAME
    records = load(directory, args.id)
    if args.json:
        print_json(records)
        return EXIT_OK
    if not records:
        who = f"{args.id!r}" if args.id else "any collector"
        print(f"no crash records of {who} in {directory}", file=sys.stderr)
        return EXIT_OK if directory.is_dir() else EXIT_ERROR
    if args.id is None:
        rows = [("TIME", "ID", "HOW", "RUN", "CORE")]
        for record in records:
            rows.append(
                (
                    utc(float(record["time"])),
                    str(record["id"]),
                    _how(record),
                    human_duration(float(record.get("run_seconds") or 0)),
                    str(record.get("core_file") or "-"),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip())
        return EXIT_OK
    for record in records:
        core = f", core {record['core_file']}" if record.get("core_file") else ""
        print(
            f"{utc(float(record['time']))} {record['id']}: {record.get('description')} "
            f"({_how(record)}) after {human_duration(float(record.get('run_seconds') or 0))}"
            f"{core}"
        )
        for line in record.get("log_tail") or []:
            print(f"    {line}")
    return EXIT_OK
