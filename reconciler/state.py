"""Collector states, health and the status record the manager reports.

Pure data shared by every layer: the planner reads these, the process manager
produces them, metrics/API/CLI show them. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CollectorState(StrEnum):
    """Actual state of a collector: DaemonEye's six plus ``backoff``."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"


class DesiredState(StrEnum):
    """What a spec (or an operator) asks a collector to be."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


TRANSITIONAL_STATES = frozenset(
    {CollectorState.STARTING, CollectorState.STOPPING, CollectorState.BACKOFF}
)
"""States a collector passes through on its way somewhere else."""

PROCESS_STATES = frozenset(
    {
        CollectorState.STARTING,
        CollectorState.RUNNING,
        CollectorState.PAUSED,
        CollectorState.STOPPING,
    }
)
"""States in which the collector has a live process."""


@dataclass(frozen=True, slots=True)
class CollectorStatus:
    """A snapshot of one collector, as ``get_collector_status`` returns it."""

    collector_id: str
    collector_type: str
    state: CollectorState
    desired: DesiredState
    health: HealthStatus
    pid: int | None
    start_time: float | None
    """Unix time the current process started; ``None`` when there is none."""
    uptime_seconds: float
    restart_count: int
    """Every restart, automatic or asked for, over the life of the collector."""
    consecutive_restarts: int
    """Automatic restarts in the current crash series."""
    last_exit_code: int | None
    """Last exit code; negative when killed by that signal."""
    last_error: str | None
    backoff_seconds: float
    """Delay left before the next automatic restart (0 when none is pending)."""
    probe_failures: int
    """Consecutive failed health probes."""
    last_error_code: str | None = None
    """The stable code (DESIGN §5) of ``last_error`` when it has one (``SPAWN_FAILED``, ...)."""
