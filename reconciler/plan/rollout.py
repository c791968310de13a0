"""Readiness and rollouts (DESIGN §4): the facts the planner reads, and its pure helpers.

A collector is *ready* once its process has run ``min_ready_seconds`` and its
``ready_check`` (if any) passed once. A start or restart caused by a spec
change is a *rollout* until it is ready; not ready within
``rollout_timeout_seconds`` it has failed, and with ``rollback`` the last
ready spec runs again while the new content is *rejected* until its file
changes. ``after`` orders starts; ``max_unavailable`` restarts changed
collectors in waves, held while a failed rollout is outstanding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.plan.planner import Desired


ROLLOUT_SETTLE_SECONDS = 1.0
"""During a rollout, a process is ready no sooner than this after its start (or
``min_ready_seconds``, if longer): one that exits at once (bad args) is never ready,
so neither ``reconciler wait`` nor the next wave takes it for a success."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """File content rolled back after a failed rollout: not tried again until the file changes."""

    spec_hash: str
    reason: str
    wall_time: float
    """When it was rejected (``time.time()``)."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """A start or restart of new spec content: open until ``rollout_timeout_seconds`` ends.

    Ready then, it is done and the content is the collector's last ready spec;
    not ready then (or given up on before), it has failed. While open, a
    collector that is not ready counts against ``max_unavailable``; a ready
    one does not, so the next wave starts once this one is ready.
    """

    spec_hash: str
    since: float
    """Clock time it began."""
    unavailable: bool
    """A running process was stopped for it (a restart, not a first start)."""
    back_to: Desired | None = None
    """The last ready spec when it began: what a rollback runs again."""
    failed: bool = False
    """Not ready by its deadline (or given up on), and not rolled back."""


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    """The ``[reconciler]`` keys of rollouts."""

    max_unavailable: int = 0
    """At most this many collectors restarting for spec changes at once; 0: no limit."""
    rollback: bool = False
    """Default of the per-spec ``rollback`` key."""


def wave_of(position: int, *, max_unavailable: int, restarting: int) -> int:
    """The wave (1-based) of the ``position``-th (0-based) collector waiting for one, when
    ``restarting`` slots are taken now: a preview, as each wave starts when one is ready."""
    free = max(0, max_unavailable - restarting)
    if position < free:
        return 1
    return 2 + (position - free) // max_unavailable
