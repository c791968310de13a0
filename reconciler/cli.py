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
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import shlex
import shutil
import signal
import stat
import sys
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.errors import InvalidSpec, InvalidState, ReconcilerError, Timeout
from reconciler.spec import (
    SPEC_SUFFIX,
    is_ignored_filename,
    json_schema,
    parse_manager_config,
    parse_spec,
    starter_spec,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


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


# --- validate -------------------------------------------------------------------------


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"a spec file, or a directory: every *{SPEC_SUFFIX} file directly in it",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        action="append",
        default=[],
        help="also check a manager config file (reconciler run --config); repeatable",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only problems, not an ok line per file"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Check spec files as the reconciler would load them; list every problem of every file."""
    if not args.paths and not args.config:
        print("reconciler validate: give PATH... and/or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    checked = failed = problem_count = 0
    for display, problems in [*_check_paths(args.paths), *map(_check_config, args.config)]:
        checked += 1
        if problems:
            failed += 1
            problem_count += len(problems)
            for problem in problems:
                print(problem, file=sys.stderr)
        elif not args.quiet:
            print(f"ok {display}")
    if failed:
        print(
            f"{InvalidSpec.code}: {_plural(problem_count, 'problem')} in "
            f"{failed} of {_plural(checked, 'file')}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _check_config(path: Path) -> tuple[str, list[str]]:
    try:
        parse_manager_config(path.read_bytes(), filename=str(path))
    except OSError as exc:
        return str(path), [f"{path}: cannot read: {exc.strerror}"]
    except InvalidSpec as exc:
        return str(path), list(exc.problems)
    return str(path), []


def _check_paths(paths: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(file as shown, its problems) for every spec file the paths name."""
    for path in paths:
        if not Path(path).is_dir():
            yield path, _check_file(path)
            continue
        try:
            names = sorted(entry.name for entry in os.scandir(path))
        except OSError as exc:
            yield path, [f"{path}: cannot read directory: {exc.strerror or exc}"]
            continue
        # The same rule the reconciler's directory watcher applies.
        spec_names = [name for name in names if not is_ignored_filename(name)]
        if not spec_names:
            print(f"{path}: no *{SPEC_SUFFIX} spec files here", file=sys.stderr)
        for name in spec_names:
            display = os.path.join(path, name)
            yield display, _check_file(display)


def _check_file(path: str) -> list[str]:
    name = os.path.basename(path)
    if is_ignored_filename(name):
        # Named on the command line, but the reconciler would never load it.
        return [
            f"{path}: file name: not a spec file, the reconciler ignores it "
            f'(spec files are named <id>{SPEC_SUFFIX} and do not start with ".")'
        ]
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    try:
        parse_spec(data, filename=path, collector_id=name.removesuffix(SPEC_SUFFIX))
    except InvalidSpec as exc:
        return exc.problems
    return []


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# --- schema ---------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of spec files."""
    del args
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


# --- new ------------------------------------------------------------------------------


def _new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="collector id: the spec file's name without .toml")
    parser.add_argument("--type", metavar="T", help="collector type (default: the id)")
    parser.add_argument("--binary", metavar="B", help="binary_path (default: looked up by type)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=f"write FILE (named ID{SPEC_SUFFIX}; a directory means DIR/ID{SPEC_SUFFIX}) "
        "instead of stdout",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing FILE")


def cmd_new(args: argparse.Namespace) -> int:
    """Write a valid starter spec to stdout or a file."""
    text = starter_spec(
        args.id, collector_type=args.type, binary_path=args.binary, args=args.passthrough
    )
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    target = Path(args.output)
    if target.is_dir():
        target = target / f"{args.id}{SPEC_SUFFIX}"
    expected = f"{args.id}{SPEC_SUFFIX}"
    if target.name != expected:
        # The file name is the id: any other name would define another collector.
        print(
            f"{target}: file name: must be {expected}, since the file name is the collector id "
            f'(this name would define "{target.name.removesuffix(SPEC_SUFFIX)}", '
            f'not "{args.id}")',
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        _write_file(target, text, overwrite=args.force)
    except FileExistsError:
        print(f"{target}: already exists (use --force to overwrite it)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"{target}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {target}", file=sys.stderr)
    return EXIT_OK


def _write_file(target: Path, text: str, *, overwrite: bool) -> None:
    """Write ``target`` all at once, as a watching reconciler must never see half a spec.

    The text goes to a hidden temporary file next to it (ignored by the
    watcher, being a dot file), which then takes the final name: ``os.replace``
    to overwrite, ``os.link`` otherwise, which fails if the name was taken
    meanwhile instead of clobbering it. Raises ``FileExistsError``.
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # 0644 less the umask, like any new file; never group/world-writable by default,
    # which a reconciler running as root would refuse.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        if overwrite:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# --- run ------------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="manager config (TOML)")
    parser.add_argument("--specs", type=Path, metavar="DIR", help="the spec directory to watch")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="state file and logs")
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="metrics listener (/metrics, /healthz, /readyz); port 0 picks one and logs it",
    )
    parser.add_argument("--socket", type=Path, metavar="PATH", help="control API unix socket")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"
    )


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the daemon pulls in the whole runtime, which the quick
    # client commands do not need.
    from reconciler.daemon import RunOptions, run

    return run(
        RunOptions(
            config_path=args.config,
            specs_dir=args.specs,
            state_dir=args.state_dir,
            metrics_address=args.metrics_address,
            socket_path=args.socket,
            log_format=args.log_format,
            log_level=args.log_level,
        )
    )


# --- control API client: status, restart, pause, resume, events, wait ------------------
#
# These talk to a running `reconciler run` over its unix socket (DESIGN §8).
# aiohttp is imported inside the functions: `validate` and `schema` must stay quick.

DEFAULT_SOCKET = "/run/reconciler/api.sock"
SOCKET_ENV = "RECONCILER_SOCKET"
API = "/api/v1"
READ_TIMEOUT_SECONDS = 30.0
WAIT_POLL_SECONDS = 0.1
ERROR_COLUMN_MIN_WIDTH = 20


class ClientFailure(Exception):
    """The daemon could not be asked; printed as it is, exit 1."""


class Unreachable(ClientFailure):
    """Nothing answers on the socket (yet): ``wait`` keeps trying until its timeout."""


class ApiFailure(Exception):
    """The daemon answered with an error body; printed as ``CODE: message``, exit 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _socket_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    parser.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=Path(default),
        help=f"the reconciler's control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET}; "
        f"now {default})",
    )


def _unreachable(socket_path: Path, error: OSError | None) -> str:
    code = error.errno if error is not None else None
    hint = "is `reconciler run` running? use --socket or $" + SOCKET_ENV + " to point elsewhere"
    if code == errno.ENOENT:
        reason = "no such file"
    elif code == errno.ECONNREFUSED and not _is_socket(socket_path):
        reason = "not a socket"
    elif code == errno.ECONNREFUSED:
        reason = "connection refused: nothing listens (a socket left by a reconciler that is gone)"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        hint = "the socket is mode 0600: run this as the reconciler's user, e.g. with sudo"
    elif error is not None:
        reason = error.strerror or str(error)
    else:
        reason = "cannot connect"
    return f"cannot reach the reconciler at {socket_path}: {reason} ({hint})"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _Client:
    """A session on the control socket; every method returns the decoded JSON body."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def __aenter__(self) -> _Client:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            "http://reconciler",
            connector=aiohttp.UnixConnector(path=str(self.socket_path)),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        timeout_seconds: float | None = READ_TIMEOUT_SECONDS,
    ) -> Any:
        aiohttp = self._aiohttp
        timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)
        try:
            async with self._session.request(
                method, API + path, params=params, timeout=timeout
            ) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(_unreachable(self.socket_path, exc.os_error)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ClientFailure(
                f"no answer from the reconciler at {self.socket_path}: {reason}"
            ) from exc
        error = body.get("error") if isinstance(body, dict) else None
        if status >= 400 and isinstance(error, dict):
            raise ApiFailure(str(error.get("code")), str(error.get("message")))
        if status >= 400 or not isinstance(body, dict):
            raise ClientFailure(
                f"unexpected answer (HTTP {status}) from {self.socket_path}: is it a reconciler?"
            )
        return body


def _client_command(
    args: argparse.Namespace, talk: Callable[[_Client], Coroutine[Any, Any, int]]
) -> int:
    """Run ``talk`` with a client on ``--socket``; failures become a line on stderr and 1."""

    async def session() -> int:
        async with _Client(args.socket) as client:
            return await talk(client)

    try:
        return asyncio.run(session())
    except (ClientFailure, ApiFailure) as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _collector_path(collector_id: str) -> str:
    return "/collectors/" + urllib.parse.quote(collector_id, safe="")


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def human_duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``4m10s``, ``45s``: two units at most, at a glance."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _utc(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- status ---------------------------------------------------------------------------


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", help="one collector, in detail")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    _socket_argument(parser)


def cmd_status(args: argparse.Namespace) -> int:
    """A table of every collector, or one collector in detail."""

    async def talk(client: _Client) -> int:
        if args.id is None:
            data = await client.call("GET", "/collectors")
            if args.json:
                _print_json(data)
            else:
                print(format_status_table(data["collectors"], width=_terminal_width()))
                if not data.get("ready", True):
                    print("(the reconciler is still starting: not every spec is applied yet)")
            return EXIT_OK
        collector = await client.call("GET", _collector_path(args.id))
        if args.json:
            _print_json(collector)
            return EXIT_OK
        events = await client.call("GET", "/events", params={"id": args.id, "limit": "5"})
        print(format_status_detail(collector, events["events"]))
        return EXIT_OK

    return _client_command(args, talk)


def _terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


STATUS_COLUMNS = ("ID", "TYPE", "DESIRED", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "ERROR")


def _attention(collector: dict[str, Any]) -> int:
    """Sort rank: failed, then crash-looping, then other trouble, then the rest."""
    if collector["state"] == "failed":
        return 0
    if collector["state"] == "backoff" or collector["consecutive_restarts"] > 0:
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
    return [
        collector["id"],
        collector["type"] or "-",
        desired,
        collector["state"],
        collector["health"],
        str(collector["pid"]) if has_process else "-",
        human_duration(collector["uptime_seconds"]) if has_process else "-",
        str(collector["restart_count"]),
        _one_line(error),
    ]


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
        started = _utc(collector["start_time"])
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
        facts.append(("last error", _one_line(collector["last_error"])))
    if collector["backoff_seconds"]:
        facts.append(("next restart", f"in {collector['backoff_seconds']:.1f} s"))
    if collector["probe_failures"]:
        facts.append(("probe failures", str(collector["probe_failures"])))
    facts.append(("converged", "yes" if collector["converged"] else "no"))
    facts.append(("spec file", collector["spec_file"] or "-"))
    if collector["spec_error"]:
        facts.append(("spec error", _one_line(collector["spec_error"])))
    if collector["spec_hash"] or collector["applied_spec_hash"]:
        applied = collector["applied_spec_hash"] or "-"
        facts.append(("spec hash", f"{collector['spec_hash'] or '-'} (applied: {applied})"))
    if spec:
        facts.append(("binary", spec.get("binary_path") or f"(looked up by type {spec['type']})"))
        facts.append(("args", " ".join(shlex.quote(arg) for arg in spec.get("args", [])) or "-"))
        env_keys = spec.get("env_keys", [])
        facts.append(("env", ", ".join(env_keys) + " (values hidden)" if env_keys else "-"))
    label_width = max(len(label) for label, _ in facts) + 1
    lines = [f"{(label + ':').ljust(label_width)} {value}" for label, value in facts]
    if events:
        lines.append("recent events:")
        lines.extend(f"  {_event_line(event)}" for event in events)
    return "\n".join(lines)


def _exit_text(code: int) -> str:
    if code >= 0:
        return str(code)
    try:
        return f"{code} (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f"{code} (killed by signal {-code})"


# --- restart, pause, resume -----------------------------------------------------------


def _action_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="collector id")
    _socket_argument(parser)


def _operator_action(verb: str, past: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def talk(client: _Client) -> int:
            # No client timeout: the daemon bounds the wait (stop timeouts, 30 s for pause).
            collector = await client.call(
                "POST", f"{_collector_path(args.id)}/{verb}", timeout_seconds=None
            )
            pid = collector.get("pid")
            print(f"{collector['id']} {past}" + (f" (pid {pid})" if pid is not None else ""))
            return EXIT_OK

        return _client_command(args, talk)

    command.__doc__ = f"{verb.capitalize()} one collector through the control API."
    return command


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload the daemon's config file (as SIGHUP does) and rescan the specs, reporting errors."""

    async def talk(client: _Client) -> int:
        await client.call("POST", "/reload")
        print("reloaded")
        return EXIT_OK

    return _client_command(args, talk)


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
    _socket_argument(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text!r})")
    return value


def _event_line(event: dict[str, Any]) -> str:
    return f"{_utc(event['unix_time'])} {event['id']} {event['kind']} {_one_line(event['message'])}"


def cmd_events(args: argparse.Namespace) -> int:
    """Recent events, oldest first: what was done, when and why."""

    async def talk(client: _Client) -> int:
        params = {}
        if args.id is not None:
            params["id"] = args.id
        if args.limit is not None:
            params["limit"] = str(args.limit)
        data = await client.call("GET", "/events", params=params)
        if args.json:
            _print_json(data)
            return EXIT_OK
        for event in data["events"]:
            print(_event_line(event))
        if not data["events"]:
            print("no events", file=sys.stderr)
        return EXIT_OK

    return _client_command(args, talk)


# --- wait -----------------------------------------------------------------------------


def _wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids", metavar="ID", nargs="*", help="only these collectors (default: every one)"
    )
    parser.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=60.0,
        metavar="S",
        help="give up after S seconds (default: 60)",
    )
    _socket_argument(parser)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})")
    return value


@dataclass(frozen=True, slots=True)
class WaitVerdict:
    """Where a rollout stands: what has failed for good, and what is still pending."""

    failed: list[str]
    pending: list[str]
    converged: int


def wait_verdict(data: dict[str, Any], ids: list[str]) -> WaitVerdict:
    """Judge one ``GET /collectors`` answer for ``reconciler wait`` (every collector if no ids).

    Failed: ``failed`` on its current, valid spec — as ``kubectl rollout
    status`` gives up on a failed rollout, since only a spec change or an
    operator's restart can bring it back. A spec error is pending (fixing the
    file resolves it), and so is a named id not seen yet (its file may not
    have been picked up).
    """
    by_id = {c["id"]: c for c in data["collectors"]}
    names = ids or sorted(by_id)
    failed, pending = [], []
    converged = 0
    if not data.get("ready", True):
        pending.append("the reconciler has not finished its first pass yet")
    for name in names:
        collector = by_id.get(name)
        if collector is None:
            pending.append(f"{name}: unknown (no such collector; is its spec file in place?)")
            continue
        if collector["converged"] and not collector["spec_error"]:
            converged += 1
            continue
        if collector["spec_error"]:
            pending.append(f"{name}: spec error: {_one_line(collector['spec_error'])}")
        elif (
            collector["state"] == "failed"
            and collector["spec_hash"] is not None
            and collector["applied_spec_hash"] == collector["spec_hash"]
        ):
            reason = _one_line(collector["last_error"] or "no error recorded")
            failed.append(f"{name}: failed on its current spec: {reason}")
        else:
            line = f"{name}: {collector['state']}, desired {collector['desired']}"
            if collector["last_error"]:
                line += f" (last error: {_one_line(collector['last_error'])})"
            pending.append(line)
    return WaitVerdict(failed=failed, pending=pending, converged=converged)


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until every (named) collector runs its current spec in its desired state."""

    async def talk(client: _Client) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        # The first look rescans the specs directory: a spec pushed just before
        # `wait` must count, not be missed because the watcher has not seen it yet.
        params = {"rescan": "true"}
        while True:
            remaining = deadline - loop.time()
            try:
                data = await client.call(
                    "GET", "/collectors", params=params, timeout_seconds=max(remaining, 1.0)
                )
            except Unreachable:
                # Run right after the service starts, the socket may not exist
                # yet: that is "not converged yet", not a failure, until the timeout.
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - loop.time())))
                continue
            params = {}
            verdict = wait_verdict(data, args.ids)
            if verdict.failed:
                for line in verdict.failed:
                    print(f"  {line}", file=sys.stderr)
                print(
                    f"{InvalidState.code}: {_plural(len(verdict.failed), 'collector')} failed "
                    "(fix the spec, or `reconciler restart ID`)",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            if not verdict.pending:
                print(f"converged: {_plural(verdict.converged, 'collector')}")
                return EXIT_OK
            if loop.time() >= deadline:
                print(
                    f"{Timeout.code}: not converged after {args.timeout:g} s; pending:",
                    file=sys.stderr,
                )
                for line in verdict.pending:
                    print(f"  {line}", file=sys.stderr)
                return EXIT_ERROR
            await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - loop.time())))

    return _client_command(args, talk)


# --- registry and dispatch ------------------------------------------------------------

SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        name="run",
        help="the daemon: keep processes equal to the spec directory (foreground, logs to stderr)",
        add_arguments=_run_arguments,
        run=cmd_run,
    ),
    Subcommand(
        name="validate",
        help="check spec files or directories; exit 1 naming file, key and reason",
        add_arguments=_validate_arguments,
        run=cmd_validate,
    ),
    Subcommand(
        name="schema",
        help="print the JSON Schema of spec files (for editors and CI linting)",
        run=cmd_schema,
    ),
    Subcommand(
        name="new",
        help="print or write a valid starter spec",
        add_arguments=_new_arguments,
        run=cmd_new,
        usage="%(prog)s ID [--type T] [--binary B] [-o FILE] [--force] [-- ARGS...]",
        passthrough=True,
    ),
    Subcommand(
        name="status",
        help="table of collectors: id, type, desired, state, health, pid, uptime, restarts, "
        "error; with ID, one in detail",
        add_arguments=_status_arguments,
        run=cmd_status,
    ),
    Subcommand(
        name="restart",
        help="gracefully restart a collector now",
        add_arguments=_action_arguments,
        run=cmd_restart,
    ),
    Subcommand(
        name="pause",
        help="pause a collector (SIGSTOP) until resumed or its spec file changes",
        add_arguments=_action_arguments,
        run=cmd_pause,
    ),
    Subcommand(
        name="resume",
        help="resume a paused collector",
        add_arguments=_action_arguments,
        run=cmd_resume,
    ),
    Subcommand(
        name="reload",
        help="reload the config file and rescan the specs now; exit 1 naming a refused key",
        add_arguments=_socket_argument,
        run=cmd_reload,
    ),
    Subcommand(
        name="events",
        help="recent events, oldest first: what was done, when and why",
        add_arguments=_events_arguments,
        run=cmd_events,
    ),
    Subcommand(
        name="wait",
        help="block until converged: exit 0 when every (named) collector runs its current "
        "spec in its desired state; 1 on timeout or failure, naming what is pending",
        add_arguments=_wait_arguments,
        run=cmd_wait,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Declarative supervisor for collector processes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        sub = commands.add_parser(
            subcommand.name,
            help=subcommand.help,
            description=subcommand.help,
            usage=subcommand.usage,
        )
        if subcommand.add_arguments is not None:
            subcommand.add_arguments(sub)
        sub.set_defaults(subcommand=subcommand)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; exits with 2 (argparse) on a usage error."""
    parser = build_parser()
    by_name = {subcommand.name: subcommand for subcommand in SUBCOMMANDS}
    cut = argv.index("--") if "--" in argv else len(argv)
    words = [arg for arg in argv[:cut] if not arg.startswith("-")]
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
    except InvalidSpec as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_ERROR
    except ReconcilerError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # `reconciler schema | head`: the reader left. Python would print a
        # traceback at exit flushing stdout; point it at /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
