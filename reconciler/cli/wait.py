"""``wait``: block until converged, as ``kubectl rollout status`` does."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from reconciler.cli.client import (
    WAIT_POLL_SECONDS,
    Client,
    Unreachable,
    client_command,
    one_line,
    socket_argument,
)
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, plural
from reconciler.errors import InvalidState, Timeout

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
    socket_argument(parser)


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
    operator's restart can bring it back; and a rollout that failed: the file's
    content rolled back (``rejected``), or a restart held because another
    collector's rollout failed. A spec error is pending (fixing the
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
        rejected, held = collector.get("rejected"), collector.get("held")
        if rejected:
            failed.append(
                f"{name}: rejected {rejected['hash']}: {one_line(rejected['reason'])}; "
                "fix or revert its spec file"
            )
        elif held and held["cause"] == "held":
            failed.append(f"{name}: held: {one_line(held['reason'])}")
        elif collector["spec_error"]:
            pending.append(f"{name}: spec error: {one_line(collector['spec_error'])}")
        elif (
            collector["state"] == "failed"
            and collector["spec_hash"] is not None
            and collector["applied_spec_hash"] == collector["spec_hash"]
        ):
            reason = one_line(collector["last_error"] or "no error recorded")
            failed.append(f"{name}: failed on its current spec: {reason}")
        else:
            line = f"{name}: {collector['state']}, desired {collector['desired']}"
            if held:
                line += f" ({one_line(held['reason'])})"
            elif collector["last_error"]:
                line += f" (last error: {one_line(collector['last_error'])})"
            pending.append(line)
    return WaitVerdict(failed=failed, pending=pending, converged=converged)


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until every (named) collector runs its current spec in its desired state."""

    def talk(client: Client) -> int:
        deadline = time.monotonic() + args.timeout
        # The first look rescans the specs directory: a spec pushed just before
        # `wait` must count, not be missed because the watcher has not seen it yet.
        params = {"rescan": "true"}
        while True:
            remaining = deadline - time.monotonic()
            try:
                data = client.call(
                    "GET", "/collectors", params=params, timeout_seconds=max(remaining, 1.0)
                )
            except Unreachable:
                # Run right after the service starts, the socket may not exist
                # yet: that is "not converged yet", not a failure, until the timeout.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                continue
            params = {}
            verdict = wait_verdict(data, args.ids)
            if verdict.failed:
                for line in verdict.failed:
                    print(f"  {line}", file=sys.stderr)
                print(
                    f"{InvalidState.code}: {plural(len(verdict.failed), 'collector')} failed, "
                    "rejected or held (fix or revert the spec, or `reconciler restart ID`)",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            if not verdict.pending:
                print(f"converged: {plural(verdict.converged, 'collector')}")
                return EXIT_OK
            if time.monotonic() >= deadline:
                print(
                    f"{Timeout.code}: not converged after {args.timeout:g} s; pending:",
                    file=sys.stderr,
                )
                for line in verdict.pending:
                    print(f"  {line}", file=sys.stderr)
                return EXIT_ERROR
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    return client_command(args, talk)
