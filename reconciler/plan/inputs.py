"""What ``plan()`` reads: the desired spec, the operator's override, and the observed facts.

Frozen data and two pure helpers, shared by the planner, its ``after`` and wave
gating (``reconciler.plan.gate``), the executor's records and ``reconciler diff``.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.plan.rollout import Rejected, Rollout
from reconciler.spec.models import CollectorSpec
from reconciler.state import CollectorState, DesiredState


@dataclass(frozen=True, slots=True)
class Desired:
    """One collector as its spec file (last known good) describes it."""

    spec: CollectorSpec
    spec_hash: str
    process_hash: str


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's runtime override, tied to the spec it was given against."""

    action: DesiredState
    """``paused`` (pause) or ``running`` (resume)."""
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    """An end nobody asked for, waiting for the restart policy's decision."""

    at: float
    """Clock time of the end."""
    description: str
    """``killed by SIGKILL``, ``failed to start: ...``, ``unhealthy: ...``."""
    run_seconds: float
    """How long the run lasted (0 for a start that failed)."""
    clean: bool = False
    """Exited 0: without auto-restart that is ``stopped``, not ``failed``."""


@dataclass(frozen=True, slots=True)
class Observed:
    """One collector as the executor sees it."""

    state: CollectorState
    applied: CollectorSpec | None
    """The spec the current (or last) process was started or updated with."""
    applied_spec_hash: str | None
    applied_process_hash: str | None
    exit: Exit | None = None
    """Set while an end nobody asked for awaits a decision (state ``stopped`` or ``backoff``)."""
    consecutive_restarts: int = 0
    """Automatic restarts in the current crash series."""
    probe_failures: int = 0
    """Consecutive failed health probes of the current run."""
    probe_detail: str = ""
    gave_up: bool = False
    """A ``GiveUp`` ended the series: down until the spec changes or an operator acts."""
    started_at: float | None = None
    """Clock time the current process started (``None``: no process)."""
    ready: bool = False
    """A ``Ready`` was recorded for the current process."""
    ready_probe_passed: bool = False
    """The ``ready_check`` passed once for the current process."""
    good: Desired | None = None
    """The last spec this collector was ready with: what a rollback goes back to."""
    rollout: Rollout | None = None
    """A rollout under way (or failed and not rolled back)."""
    rejected: Rejected | None = None
    """Content rolled back after a failed rollout: while its file says it, the good spec runs."""
    last_error: str | None = None
    """Its last error, for what a failed rollout says."""


HAS_PROCESS = frozenset({CollectorState.RUNNING, CollectorState.PAUSED, CollectorState.STARTING})


def changed_keys(old: CollectorSpec | None, new: CollectorSpec) -> list[str]:
    """Top-level spec keys whose values differ, for reasons a person reads."""
    if old is None:
        return []
    before, after = old.model_dump(), new.model_dump()
    return sorted(key for key in after if before.get(key) != after.get(key))


def effective_state(desired: Desired, override: Override | None) -> DesiredState:
    """What the collector should be now: the spec's state unless an override holds."""
    if override is not None and override.spec_hash == desired.spec_hash:
        return override.action
    return desired.spec.state
