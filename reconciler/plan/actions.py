"""What the planner can decide: small frozen actions, each for one collector.

The reconcile loop and the library façade carry them out through the
executor; ``reconciler diff`` prints them (``describe``). Every action that
starts a process carries both hashes of the spec it starts, so the executor
never pairs a spec with an identity read later from a newer snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.spec.models import CollectorSpec


@dataclass(frozen=True, slots=True)
class Start:
    """Start a process for a collector that has none."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    process_hash: str
    reason: str
    automatic: bool = False
    """A restart the restart policy made (after a crash, a failed start or a probe)."""
    attempt: int = 0
    """Restart number in the current crash series (0 for a start that begins none)."""


@dataclass(frozen=True, slots=True)
class Restart:
    """Graceful stop (if a process runs), then start this spec: what the process *is* changed."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    process_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Update:
    """Apply a spec whose process identity is unchanged; no restart."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    process_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    collector_id: str
    reason: str
    forget: bool = False
    """Then drop the collector from view (its spec file is gone)."""
    as_crash: bool = False
    """The stop is the restart policy's (a failed health probe): afterwards the
    end counts as a crash, and the next plan decides restart, backoff or failed."""


@dataclass(frozen=True, slots=True)
class Pause:
    collector_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resume:
    collector_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop a collector with no process whose spec file is gone."""

    collector_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before ``until`` (clock time): a backoff delay.

    The loop keeps one timer, at the earliest ``until`` of a plan, and plans
    again then; meanwhile the collector shows ``backoff``.
    """

    collector_id: str
    until: float
    reason: str
    attempt: int
    """The restart the wait leads to (its number in the crash series)."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End a crash series without a restart: ``failed`` (or ``stopped`` after a clean exit
    with auto-restart off) until the spec changes or an operator restarts it."""

    collector_id: str
    reason: str
    clean: bool = False
    """The exit was clean (code 0) and auto-restart is off: ``stopped``, not ``failed``."""
    exhausted: bool = False
    """``max_restarts`` was reached: the reason becomes the last error."""


Action = Start | Restart | Update | Stop | Pause | Resume | Forget | Wait | GiveUp

FREEING_ACTIONS = (Stop, Forget, Restart)
"""Run first, and waited for before the rest of the same plan (stop before start)."""

ORDER = {
    Stop: 0,
    Forget: 1,
    GiveUp: 2,
    Pause: 3,
    Update: 4,
    Restart: 5,
    Resume: 6,
    Start: 7,
    Wait: 8,
}
"""Stop before start: what frees resources runs first (kopf orchestration)."""


def describe(action: Action) -> str:
    """One line a person reads: ``restart web (spec changed: args)``."""
    cid = action.collector_id
    match action:
        case Start(automatic=True):
            return f"restart {cid} ({action.reason})"
        case Start():
            return f"start {cid} ({action.reason})"
        case Restart():
            return f"restart {cid} ({action.reason})"
        case Update():
            keys = action.reason.partition(": ")[2]
            return f"update {cid} in place ({keys or action.reason})"
        case Stop():
            return f"stop {cid} ({action.reason})"
        case Pause():
            return f"pause {cid} ({action.reason})"
        case Resume():
            return f"resume {cid} ({action.reason})"
        case Forget():
            return f"forget {cid} ({action.reason})"
        case Wait():
            return f"wait {cid} ({action.reason})"
        case GiveUp():
            return f"give up on {cid} ({action.reason})"
    raise AssertionError(f"unknown action {action!r}")  # pragma: no cover


def kind(action: Action) -> str:
    """The action's name as metrics and the event record spell it (``restart``, ``stop``)."""
    if isinstance(action, Start) and action.automatic:
        return "restart"
    return type(action).__name__.lower()
