"""netmond: network traffic per interface, and TCP connections by state.

An example collector (console script ``reconciler-netmond``, run by
``specs/netmond.toml``). Each line::

    {"ts": "...", "collector": "netmond", "host": "...", "elapsed_seconds": 5.0,
     "interfaces": {"eth0": {"bytes_sent": 5120, "bytes_recv": 20480, "packets_sent": 40,
                             "packets_recv": 52, "errin": 0, "errout": 0, "dropin": 0,
                             "dropout": 0}, ...},
     "tcp": {"total": 12, "by_state": {"established": 7, "listen": 4, "time_wait": 1}}}

Interface figures are what happened during ``elapsed_seconds``, the time since
the previous sample (divide for a rate). An interface that appeared since then
is reported from the next sample on; one whose counters went back (recreated)
counts from zero. Where the system does not let this user list connections,
``tcp`` is ``null`` and ``tcp_note`` says why.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Mapping

import psutil

from reconciler.collectors.runner import Collector, Record, run

COUNTERS = (
    "bytes_sent",
    "bytes_recv",
    "packets_sent",
    "packets_recv",
    "errin",
    "errout",
    "dropin",
    "dropout",
)

Totals = Mapping[str, tuple[int, ...]]


def _read_counters(interfaces: frozenset[str]) -> dict[str, tuple[int, ...]]:
    # nowrap (the default) hides 32-bit counters wrapping between two reads.
    return {
        name: tuple(getattr(counters, field) for field in COUNTERS)
        for name, counters in psutil.net_io_counters(pernic=True).items()
        if not interfaces or name in interfaces
    }


def _deltas(before: Totals, after: Totals) -> dict[str, dict[str, int]]:
    return {
        name: {
            # A counter that went back means the interface was recreated: it counts
            # from zero, so its value is what happened since.
            field: new - old if new >= old else new
            for field, old, new in zip(COUNTERS, before[name], values, strict=True)
        }
        for name, values in sorted(after.items())
        if name in before
    }


def _tcp_states() -> tuple[Record | None, str | None]:
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None, "listing connections needs more privileges (root on macOS and BSD)"
    states = Counter(connection.status.lower() for connection in connections)
    return {"total": len(connections), "by_state": dict(states.most_common())}, None


class NetworkSampler:
    """Keeps the previous counters, for the per-interval deltas."""

    def __init__(self, *, interfaces: frozenset[str]) -> None:
        self.interfaces = interfaces
        self.previous = _read_counters(interfaces)
        self.previous_seconds = time.monotonic()

    def sample(self) -> Record:
        current = _read_counters(self.interfaces)
        now_seconds = time.monotonic()
        record: Record = {
            "elapsed_seconds": round(now_seconds - self.previous_seconds, 3),
            "interfaces": _deltas(self.previous, current),
        }
        self.previous, self.previous_seconds = current, now_seconds
        record["tcp"], note = _tcp_states()
        if note is not None:
            record["tcp_note"] = note
        return record


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="NAME",
        help="report only this interface (repeatable; default: all, loopback included)",
    )


def _create_sampler(options: argparse.Namespace) -> NetworkSampler:
    return NetworkSampler(interfaces=frozenset(options.interface))


COLLECTOR = Collector(
    name="netmond",
    description=__doc__ or "",
    create_sampler=_create_sampler,
    add_arguments=_add_arguments,
)


def main(argv: list[str] | None = None) -> int:
    """Console script ``reconciler-netmond``."""
    return run(COLLECTOR, argv)


if __name__ == "__main__":
    raise SystemExit(main())
