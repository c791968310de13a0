"""What the planner can decide: small frozen actions, each for one collector.

The reconcile loop and the library façade carry them out through the
executor; ``reconciler diff`` prints them (``describe``). Every action that
starts a process carries both hashes of the spec it starts, so the executor
never pairs a spec with an identity read later from a newer snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    rollout: bool = False
    """The spec was never seen ready: a rollout, under way until the process is ready."""


@dataclass(frozen=True, slots=True)
class Restart:
    """Graceful stop (if a process runs), then start this spec: what the process *is* changed."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    process_hash: str
    reason: str
    rollout: bool = False
    """As ``Start.rollout``."""
    wave: int = 0
    """With ``max_unavailable``: the wave it belongs to (1: now); 0 without."""


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
    backoff: bool = True
    """A backoff delay (the collector shows ``backoff``); else only a time to look again
    (``min_ready_seconds`` ends, a rollout's deadline)."""
    recheck: float | None = None
    """Look again at this earlier time too (a rollout's deadline during a backoff)."""

    @property
    def wake_at(self) -> float:
        return self.until if self.recheck is None else min(self.until, self.recheck)


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


@dataclass(frozen=True, slots=True)
class Ready:
    """The process is ready (§4): record it, and its spec as the last ready one."""

    collector_id: str
    spec_hash: str
    reason: str
    announce: bool = True
    """Worth an event: readiness took a probe or ``min_ready_seconds`` (else it is the
    instant after ``started``, and a cold start of a thousand would log a thousand more)."""
    recheck: float | None = None
    """Look again then: the open rollout's deadline."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """A failed rollout: reject the new content, and run the last ready spec again."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    process_hash: str
    rejected_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutFailed:
    """A failed rollout with nothing to roll back to (or ``rollback`` off): record it."""

    collector_id: str
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutDone:
    """Ready at the end of its rollout: the content is the collector's last ready spec."""

    collector_id: str
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """An action that must wait for other collectors: ``after``, a wave, a held rollout."""

    collector_id: str
    held: Start | Restart | Stop
    reason: str
    cause: str
    """``after`` (a dependency is not ready, or a dependent not yet stopped), ``wave``
    (``max_unavailable`` reached) or ``held`` (a failed rollout holds the waves)."""
    wave: int = 0
    """For ``wave``: the wave it would start in, as previewed now."""


Action = (
    Start
    | Restart
    | Update
    | Stop
    | Pause
    | Resume
    | Forget
    | Wait
    | GiveUp
    | Ready
    | Rollback
    | RolloutFailed
    | RolloutDone
    | Hold
)

NOTES = (Wait, GiveUp, Ready, RolloutFailed, RolloutDone)
"""Decisions that need no effect on a process: recorded at once, not run as a task."""

FREEING_ACTIONS = (Stop, Forget, Restart, Rollback)
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
    Ready: 2,
    RolloutFailed: 2,
    RolloutDone: 2,
    Rollback: 5,
    Hold: 9,
}
"""Stop before start: what frees resources runs first (kopf orchestration)."""


_TEMPLATES: dict[type, str] = {
    Start: "start {id} ({reason})",
    Restart: "restart {id} ({reason})",
    Stop: "stop {id} ({reason})",
    Pause: "pause {id} ({reason})",
    Resume: "resume {id} ({reason})",
    Forget: "forget {id} ({reason})",
    Wait: "wait {id} ({reason})",
    GiveUp: "give up on {id} ({reason})",
    Ready: "mark {id} ready ({reason})",
    Rollback: "roll back {id} ({reason})",
    RolloutFailed: "rollout of {id} failed ({reason})",
    RolloutDone: "rollout of {id} done ({reason})",
}


def describe(action: Action) -> str:
    """One line a person reads: ``restart web (spec changed: args)``."""
    cid = action.collector_id
    match action:
        case Start(automatic=True) | Restart(wave=0):
            return f"restart {cid} ({action.reason})"
        case Restart():
            return f"restart {cid} in wave {action.wave} ({action.reason})"
        case Update():
            keys = action.reason.partition(": ")[2]
            return f"update {cid} in place ({keys or action.reason})"
        case Hold(cause="wave", held=Restart() as held):
            return describe(replace(held, wave=action.wave))
        case Hold():
            return f"{describe(action.held)}; held: {action.reason}"
    return _TEMPLATES[type(action)].format(id=cid, reason=action.reason)


def kind(action: Action) -> str:
    """The action's name as metrics and the event record spell it (``restart``, ``stop``)."""
    if isinstance(action, Start) and action.automatic:
        return "restart"
    if isinstance(action, RolloutFailed):
        return "rollout_failed"
    if isinstance(action, RolloutDone):
        return "rollout_done"
    return type(action).__name__.lower()
