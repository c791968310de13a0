"""``status``, ``restart``, ``pause``, ``resume``, ``reload`` and ``events``: asking a daemon.

``shlex`` and ``signal`` are imported where a collector's detail needs them, not for the table
(see ``reconciler.cli.common`` on what a status request may import).
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.client import (
    ERROR_COLUMN_MIN_WIDTH,
    Client,
    client_command,
    collector_path,
    human_duration,
    one_line,
    socket_argument,
    utc,
)
from reconciler.cli.common import EXIT_OK, print_json, terminal_columns

TYPE_CHECKING = False  # not typing's: its import costs ~4 ms (type checkers take the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# --- status ---------------------------------------------------------------------------


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", help="one collector, in detail")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    socket_argument(parser)


def cmd_status(args: argparse.Namespace) -> int:
    """A table of every collector, or one collector in detail."""

    def talk(client: Client) -> int:
        if args.id is None:
            data = client.call("GET", "/collectors")
            if args.json:
                print_json(data)
            else:
                print(format_status_table(data["collectors"], width=terminal_columns(fallback=120)))
                if not data.get("ready", True):
                    print("(the reconciler is still starting: not every spec is applied yet)")
            return EXIT_OK
        collector = client.call("GET", collector_path(args.id))
        if args.json:
            print_json(collector)
            return EXIT_OK
        events = client.call("GET", "/events", params={"id": args.id, "limit": "5"})
        print(format_status_detail(collector, events["events"]))
        return EXIT_OK

    return client_command(args, talk)


STATUS_COLUMNS = ("ID", "TYPE", "DESIRED", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "ERROR")


def _attention(collector: dict[str, Any]) -> int:
    """Sort rank: failed, then crash-looping, then other trouble, then the rest."""
    if collector["state"] == "failed":
        return 0
    if collector["state"] == "backoff" or collector["consecutive_restarts"] > 0:
        return 1
    if collector.get("rejected") or (collector.get("held") or {}).get("cause") == "held":
        return 1
    if collector["spec_error"] or collector["health"] == "unhealthy":
        return 2
    return 3


def _status_row(collector: dict[str, Any]) -> list[str]:
    has_process = collector["pid"] is not None
    desired = collector["desired"] + ("*" if collector["override"] else "")
    if collector["spec"] is None and collector["spec_error"]:
        desired = "-"  # no valid version of its file yet: nothing is desired
    error = collector["spec_error"] or collector["last_error"] or ""
    if error and not collector["spec_error"] and collector.get("last_error_code"):
        error = f"{collector['last_error_code']}: {error}"
    elif collector["spec_error"]:
        error = f"INVALID_SPEC: {error}"
    rollout = _rollout_text(collector)
    if rollout:
        error = f"{rollout}; {error}" if error else rollout
    return [
        collector["id"],
        collector["type"] or "-",
        desired,
        collector["state"],
        collector["health"],
        str(collector["pid"]) if has_process else "-",
        human_duration(collector["uptime_seconds"]) if has_process else "-",
        str(collector["restart_count"]),
        one_line(error),
    ]


def _rollout_text(collector: dict[str, Any]) -> str:
    """What a rollout says of the collector: its content rejected, or what it waits for."""
    rejected, held = collector.get("rejected"), collector.get("held")
    if rejected:
        return f"rejected {rejected['hash']}: {rejected['reason']}"
    if held:
        return f"held: {held['reason']}"
    return ""


def format_status_table(collectors: list[dict[str, Any]], *, width: int = 120) -> str:
    """The ``reconciler status`` table: aligned columns, trouble first, errors cut to fit."""
    if not collectors:
        return "no collectors"
    ordered = sorted(collectors, key=lambda c: (_attention(c), c["id"]))
    rows = [list(STATUS_COLUMNS), *(_status_row(c) for c in ordered)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATUS_COLUMNS) - 1)]
    fixed = sum(widths) + 2 * len(widths)
    error_width = max(ERROR_COLUMN_MIN_WIDTH, width - fixed)
    lines = []
    for row in rows:
        error = row[-1]
        if len(error) > error_width:
            error = error[: error_width - 3] + "..."
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, error]).rstrip())
    if any(c["override"] for c in collectors):
        lines.append("* operator override (pause/resume): holds until the spec file changes")
    return "\n".join(lines)


def format_status_detail(collector: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """``reconciler status ID``: everything about one collector, one fact a line."""
    spec = collector["spec"] or {}
    override = collector["override"]
    desired = collector["desired"]
    if override:
        desired += f" (operator override: {override['reason']})"
    pid = collector["pid"]
    facts: list[tuple[str, str]] = [
        ("id", collector["id"]),
        ("type", collector["type"] or "-"),
        ("desired", desired),
        ("state", collector["state"]),
        ("health", collector["health"]),
        ("pid", str(pid) if pid is not None else "-"),
    ]
    if collector["start_time"] is not None:
        started = utc(collector["start_time"])
        facts.append(("started", f"{started} (up {human_duration(collector['uptime_seconds'])})"))
    facts.append(
        (
            "restarts",
            f"{collector['restart_count']} ({collector['consecutive_restarts']} consecutive)",
        )
    )
    if collector["last_exit_code"] is not None:
        facts.append(("last exit", _exit_text(collector["last_exit_code"])))
    if collector["last_error"]:
        code = collector.get("last_error_code")
        prefix = f"{code}: " if code else ""
        facts.append(("last error", prefix + one_line(collector["last_error"])))
    if collector["backoff_seconds"]:
        facts.append(("next restart", f"in {collector['backoff_seconds']:.1f} s"))
    if collector["probe_failures"]:
        facts.append(("probe failures", str(collector["probe_failures"])))
    facts.extend(_rollout_facts(collector))
    facts.append(("spec file", collector["spec_file"] or "-"))
    if collector["spec_error"]:
        facts.append(("spec error", one_line(collector["spec_error"])))
    if collector["spec_hash"] or collector["applied_spec_hash"]:
        applied = collector["applied_spec_hash"] or "-"
        facts.append(("spec hash", f"{collector['spec_hash'] or '-'} (applied: {applied})"))
    if spec:
        import shlex

        facts.append(("binary", spec.get("binary_path") or f"(looked up by type {spec['type']})"))
        facts.append(("args", " ".join(shlex.quote(arg) for arg in spec.get("args", [])) or "-"))
        env_keys = spec.get("env_keys", [])
        facts.append(("env", ", ".join(env_keys) + " (values hidden)" if env_keys else "-"))
    facts.extend(_log_and_crash_facts(collector))
    crash = collector.get("last_crash")
    label_width = max(len(label) for label, _ in facts) + 1
    lines = [f"{(label + ':').ljust(label_width)} {value}" for label, value in facts]
    lines.extend(_crash_lines(crash))
    if events:
        lines.append("recent events:")
        lines.extend(f"  {_event_line(event)}" for event in events)
    return "\n".join(lines)


def _rollout_facts(collector: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    if collector["pid"] is not None:
        facts.append(("ready", "yes" if collector.get("ready") else "no"))
    facts.append(("converged", "yes" if collector["converged"] else "no"))
    rejected, held = collector.get("rejected"), collector.get("held")
    if rejected:
        facts.append(
            (
                "rejected",
                f"{rejected['hash']} at {utc(rejected['time'])}: {one_line(rejected['reason'])} "
                "(runs its last ready spec until the file changes)",
            )
        )
    if held:
        facts.append(("held", one_line(held["reason"])))
    return facts


def _log_and_crash_facts(collector: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    if collector.get("log_file"):
        facts.append(("log file", str(collector["log_file"])))
    if collector.get("last_crash"):
        facts.append(("last crash", _crash_text(collector["last_crash"], collector["id"])))
    return facts


def _crash_text(crash: dict[str, Any], collector_id: str) -> str:
    how = f"signal {crash['signal']}" if crash.get("signal") else f"exit {crash['exit_code']}"
    core = f", core {crash['core_file']}" if crash.get("core_file") else ""
    after = human_duration(crash["run_seconds"])
    return f"{utc(crash['time'])} {how} after {after}{core} (reconciler crashes {collector_id})"


def _crash_lines(crash: dict[str, Any] | None) -> list[str]:
    if not crash or not crash.get("log_tail"):
        return []
    return ["last crash, its last log lines:", *(f"  {line}" for line in crash["log_tail"][-10:])]


def _exit_text(code: int) -> str:
    if code >= 0:
        return str(code)
    import signal

    try:
        return f"{code} (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f"{code} (killed by signal {-code})"


# --- restart, pause, resume -----------------------------------------------------------


def _action_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="collector id")
    socket_argument(parser)


def _operator_action(verb: str, past: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        def talk(client: Client) -> int:
            # No client timeout: the daemon bounds the wait (stop timeouts, 30 s for pause).
            collector = client.call(
                "POST", f"{collector_path(args.id)}/{verb}", timeout_seconds=None
            )
            pid = collector.get("pid")
            print(f"{collector['id']} {past}" + (f" (pid {pid})" if pid is not None else ""))
            return EXIT_OK

        return client_command(args, talk)

    command.__doc__ = f"{verb.capitalize()} one collector through the control API."
    return command


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload the daemon's config file (as SIGHUP does) and rescan the specs, reporting errors."""

    def talk(client: Client) -> int:
        client.call("POST", "/reload")
        print("reloaded")
        return EXIT_OK

    return client_command(args, talk)


cmd_restart = _operator_action("restart", "restarted")
cmd_pause = _operator_action("pause", "paused")
cmd_resume = _operator_action("resume", "resumed")


# --- events ---------------------------------------------------------------------------


def _events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", help="only this collector's events")
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the last N (default: all kept)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    socket_argument(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text!r})")
    return value


def _event_line(event: dict[str, Any]) -> str:
    return f"{utc(event['unix_time'])} {event['id']} {event['kind']} {one_line(event['message'])}"


def cmd_events(args: argparse.Namespace) -> int:
    """Recent events, oldest first: what was done, when and why."""

    def talk(client: Client) -> int:
        params = {}
        if args.id is not None:
            params["id"] = args.id
        if args.limit is not None:
            params["limit"] = str(args.limit)
        data = client.call("GET", "/events", params=params)
        if args.json:
            print_json(data)
            return EXIT_OK
        for event in data["events"]:
            print(_event_line(event))
        if not data["events"]:
            print("no events", file=sys.stderr)
        return EXIT_OK

    return client_command(args, talk)
