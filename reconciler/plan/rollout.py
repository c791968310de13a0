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


@dataclass(frozen=True, slots=True)
class Rejected:
    """File content rolled back after a failed rollout: not tried again until the file changes."""

    spec_hash: str
    reason: str
    wall_time: float
    """When it was rejected (``time.time()``)."""
