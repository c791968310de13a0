"""``plan(desired, observed, now)``: the whole reconcile decision, as a pure function.

Given what the spec files ask for and what the executor observed of the
processes, return the actions that make the second equal the first. No clock
(``now`` is passed in), no I/O, no logging: the reconcile loop and the library
façade call it on every pass and carry out what it returns; ``reconciler
diff`` prints it; unit tests call it with tables. Every "why" of DESIGN §2
and §4 is here:

- what a spec change means (§2): a key of what the process *is*
  (``PROCESS_IDENTITY_KEYS``) -> ``Restart``; ``state`` -> ``Start``, ``Stop``,
  ``Pause`` or ``Resume``; restart policy, timeouts, probes -> ``Update`` in
  place; file removed -> ``Stop(forget=True)``, or ``Forget`` when nothing
  runs. An invalid file never reaches here: its last-known-good spec stays
  desired.
- crashes (§4): an exit nobody asked for (``Observed.exit``: a crash, a start
  that failed, a stop for a failed probe) is decided by the restart policy
  (``reconciler.plan.policy``): ``Start(automatic=True)`` at once for the
  first of a series, ``Wait(until)`` through the backoff delay and then
  ``Start``, ``GiveUp`` (``failed``) past ``max_restarts``. ``failed`` stays
  until the spec changes or an operator restarts the collector.
- health (§4): a probe that reached its failure threshold -> ``Stop(as_crash=True)``
  when auto-restart is on, and the crash rules above take it from there.
- operator overrides (§7): pause and resume hold until the spec changes or the
  opposite action is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.plan.actions import (
    ORDER,
    Action,
    Forget,
    GiveUp,
    Pause,
    Restart,
    Resume,
    Start,
    Stop,
    Update,
    Wait,
)
from reconciler.plan.policy import NoRestart, RestartAfter, RestartPolicy, decide_restart
from reconciler.spec.identity import PROCESS_IDENTITY_KEYS
from reconciler.spec.models import CollectorSpec, ProcessManagerConfig
from reconciler.state import CollectorState, DesiredState

# -- inputs -------------------------------------------------------------------


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


_HAS_PROCESS = frozenset({CollectorState.RUNNING, CollectorState.PAUSED, CollectorState.STARTING})


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


def _with_keys(prefix: str, keys: list[str]) -> str:
    return f"{prefix}: {', '.join(keys)}" if keys else prefix


@dataclass(frozen=True, slots=True)
class _Case:
    """One collector's inputs, with what every rule below reads worked out once."""

    collector_id: str
    desired: Desired
    observed: Observed
    override: Override | None
    want: DesiredState
    spec_changed: bool
    identity_changed: bool
    keys: list[str]

    def start(self, reason: str, *, automatic: bool = False, attempt: int = 0) -> Start:
        d = self.desired
        return Start(
            self.collector_id, d.spec, d.spec_hash, d.process_hash, reason, automatic, attempt
        )

    def restart(self, reason: str) -> Restart:
        d = self.desired
        return Restart(self.collector_id, d.spec, d.spec_hash, d.process_hash, reason)

    def update(self, reason: str) -> Update:
        d = self.desired
        return Update(self.collector_id, d.spec, d.spec_hash, d.process_hash, reason)

    @property
    def identity_keys(self) -> list[str]:
        return [key for key in self.keys if key in PROCESS_IDENTITY_KEYS]


def _gone(collector_id: str, observed: Observed | None) -> Action | None:
    """The spec file was removed: stop what runs, then forget the collector."""
    if observed is None:
        return None
    if observed.state in _HAS_PROCESS or observed.state == CollectorState.STOPPING:
        return Stop(collector_id, "spec file removed", forget=True)
    return Forget(collector_id, "spec file removed")


def _after_exit(case: _Case, exit_: Exit, defaults: ProcessManagerConfig, now: float) -> Action:
    """An end nobody asked for: restart at once, wait out the backoff, or give up (§4)."""
    if case.identity_changed:
        # A fix pushed during backoff applies at once, and begins a new series.
        return case.restart(_with_keys("spec changed during backoff", case.identity_keys))
    # The policy of the spec as it is now: a max_restarts raised during backoff counts.
    decision = decide_restart(
        RestartPolicy.resolve(case.desired.spec, defaults),
        consecutive_restarts=case.observed.consecutive_restarts,
        run_seconds=exit_.run_seconds,
        exit_description=exit_.description,
        jitter_key=case.collector_id,
    )
    if not isinstance(decision, RestartAfter):
        if case.spec_changed:
            # Record the new spec first, so that a spec change is what ends ``failed``.
            return case.update(_with_keys("spec changed", case.keys))
        if isinstance(decision, NoRestart):
            return GiveUp(case.collector_id, decision.reason, clean=exit_.clean)
        return GiveUp(case.collector_id, decision.reason, exhausted=True)
    until = exit_.at + decision.delay_seconds
    if now < until:
        return Wait(
            case.collector_id,
            until,
            f"backoff {decision.delay_seconds:.1f} s before restart {decision.attempt} "
            f"({exit_.description})",
            decision.attempt,
        )
    reason = (
        f"restarted after crash ({exit_.description})"
        if decision.delay_seconds == 0
        else f"restarted after backoff ({exit_.description})"
    )
    # The restart starts the spec as it is now: a policy edit needs no Update of its own.
    return case.start(reason, automatic=True, attempt=decision.attempt)


def _down(case: _Case) -> Action | None:
    """No process, and no end waiting for a decision: stopped, failed or given up."""
    state = case.observed.state
    if case.observed.gave_up or state == CollectorState.FAILED:
        if not case.spec_changed:
            return None  # stays down until the spec changes or an operator restarts it
        return case.start(_with_keys("spec changed", case.keys))
    if case.spec_changed and case.observed.applied is not None:
        return case.start(_with_keys("spec changed", case.keys))
    return case.start("spec state is running" if state == CollectorState.STOPPED else "new spec")


def _live(case: _Case, defaults: ProcessManagerConfig) -> Action | None:
    """A process runs (or is paused): spec changes, probes, pause and resume."""
    collector_id, observed, want = case.collector_id, case.observed, case.want
    if case.identity_changed:
        return case.restart(_with_keys("spec changed", case.identity_keys))
    update_keys = [key for key in case.keys if key != "state"]
    if case.spec_changed and (update_keys or observed.applied is None):
        return case.update(_with_keys("spec changed", update_keys))
    check = case.desired.spec.health_check
    if (
        observed.state == CollectorState.RUNNING
        and check is not None
        and observed.probe_failures >= check.failure_threshold
        and RestartPolicy.resolve(case.desired.spec, defaults).auto_restart
    ):
        return Stop(collector_id, f"unhealthy: {observed.probe_detail}", as_crash=True)
    override = case.override
    by_operator = override.reason if override is not None and want == override.action else None
    if want == DesiredState.PAUSED and observed.state == CollectorState.RUNNING:
        return Pause(collector_id, by_operator or "spec state is paused")
    if want == DesiredState.RUNNING and observed.state == CollectorState.PAUSED:
        return Resume(collector_id, by_operator or "spec state is running")
    if case.spec_changed:
        # Only `state` changed and the process is already as asked: record it.
        return case.update("spec changed: state")
    return None


def _plan_one(
    collector_id: str,
    desired: Desired | None,
    observed: Observed | None,
    override: Override | None,
    defaults: ProcessManagerConfig,
    now: float,
) -> Action | None:
    if desired is None:
        return _gone(collector_id, observed)
    want = effective_state(desired, override)
    if observed is None:
        if want == DesiredState.STOPPED:
            return None
        return Start(
            collector_id, desired.spec, desired.spec_hash, desired.process_hash, "new spec"
        )
    state = observed.state
    if state in (CollectorState.STARTING, CollectorState.STOPPING):
        return None  # an operation is under way; its end wakes the loop again
    spec_changed = observed.applied_spec_hash != desired.spec_hash
    case = _Case(
        collector_id=collector_id,
        desired=desired,
        observed=observed,
        override=override,
        want=want,
        spec_changed=spec_changed,
        identity_changed=observed.applied_process_hash != desired.process_hash,
        # Diffing specs costs a model dump each: only when the hashes say they differ.
        keys=changed_keys(observed.applied, desired.spec) if spec_changed else [],
    )
    if want == DesiredState.STOPPED:
        if state == CollectorState.STOPPED and observed.exit is None:
            return None
        reason = "stopped by operator" if override is not None else "spec state is stopped"
        return Stop(collector_id, reason)
    if observed.exit is not None and state in (CollectorState.STOPPED, CollectorState.BACKOFF):
        return _after_exit(case, observed.exit, defaults, now)
    if state in (CollectorState.STOPPED, CollectorState.FAILED, CollectorState.BACKOFF):
        return _down(case)
    return _live(case, defaults)


def plan(
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    now: float,
    *,
    overrides: Mapping[str, Override] | None = None,
    defaults: ProcessManagerConfig | None = None,
) -> list[Action]:
    """Return the actions that make ``observed`` equal ``desired``: at most one per collector.

    Pure: no clock, no I/O, no logging. ``now`` is the caller's clock reading
    (backoff deadlines are compared with it); ``defaults`` the
    ``[process_manager]`` table that fills what specs leave unset. Stops come
    before starts; ``Wait``s come last.
    """
    overrides = overrides or {}
    defaults = defaults if defaults is not None else _DEFAULTS
    actions = []
    for collector_id in sorted(desired.keys() | observed.keys()):
        action = _plan_one(
            collector_id,
            desired.get(collector_id),
            observed.get(collector_id),
            overrides.get(collector_id),
            defaults,
            now,
        )
        if action is not None:
            actions.append(action)
    actions.sort(key=lambda action: ORDER[type(action)])
    return actions


_DEFAULTS = ProcessManagerConfig()


def converged(desired: Desired, observed: Observed | None, override: Override | None) -> bool:
    """Whether a collector runs its current spec in its desired state (``reconciler wait``)."""
    want = effective_state(desired, override)
    if observed is None:
        return want == DesiredState.STOPPED
    if observed.applied_spec_hash != desired.spec_hash and want != DesiredState.STOPPED:
        return False
    return observed.state.value == want.value
