"""What the process layer tells its listeners: one ``ManagerEvent`` per thing done or seen.

The reconcile loop keeps them as its event record, metrics count some of them,
the daemon saves the state file on those that change it. Pure data.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ManagerEvent:
    """Something the manager did or saw, for logs, the event record and the loop."""

    collector_id: str
    kind: str
    message: str
    wall_time: float
    automatic: bool = False
    """On ``started``: a restart the restart policy made (after a crash or backoff)."""
    forced: bool = False
    """On ``stopped`` and ``failed``: the stop had to SIGKILL."""


def describe_exit(returncode: int | None) -> str:
    """Human words for an exit code as subprocess reports it (negative: signal)."""
    if returncode is None:
        return "exited (status unknown: adopted from an earlier reconciler)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"
