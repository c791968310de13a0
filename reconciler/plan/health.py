"""Health (DESIGN §4) from what is observed: a pure function, like every other decision.

healthy when actual matches desired and the probe (if any) passes; degraded
while in transition or below the failure threshold; unhealthy when failed, or
the probe reached its threshold; unknown while a probe has not yet run. The
executor's records call it for status and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.state import (
    PROCESS_STATES,
    TRANSITIONAL_STATES,
    CollectorState,
    DesiredState,
    HealthStatus,
)


@dataclass(frozen=True, slots=True)
class HealthFacts:
    state: CollectorState
    desired: DesiredState
    has_process: bool
    process_exited: bool
    """The kernel reported the exit, and the record has not caught up yet."""
    awaiting_restart: bool
    """An end nobody asked for waits for the restart policy."""
    failure_threshold: int | None
    """The health check's; ``None`` without one."""
    probe_failures: int
    probe_passed: bool | None


def health(facts: HealthFacts) -> HealthStatus:
    state, threshold = facts.state, facts.failure_threshold
    if state == CollectorState.FAILED:
        return HealthStatus.UNHEALTHY
    if facts.has_process and threshold is not None and facts.probe_failures >= threshold:
        return HealthStatus.UNHEALTHY
    if state in TRANSITIONAL_STATES or facts.awaiting_restart:
        return HealthStatus.DEGRADED
    if state != facts.desired:  # type: ignore[comparison-overlap]  # StrEnums: their values
        return HealthStatus.DEGRADED
    if state in PROCESS_STATES and facts.has_process:
        if facts.process_exited:
            return HealthStatus.DEGRADED
        if threshold is not None and state == CollectorState.RUNNING:
            if facts.probe_failures > 0:
                return HealthStatus.DEGRADED
            if facts.probe_passed is None:
                return HealthStatus.UNKNOWN
    return HealthStatus.HEALTHY
