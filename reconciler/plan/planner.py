"""``plan(desired, observed, now)``: the whole reconcile decision, as a pure function.

Given what the spec files ask for and what the process manager reports, return
the actions that make the second equal the first. No clock (``now`` is passed
in), no I/O, no logging: the reconcile loop calls it on every pass and carries
out what it returns; unit tests call it with tables.

What a spec change means (DESIGN §2):
- a key of what the process *is* (``PROCESS_IDENTITY_KEYS``) -> ``Restart``;
- ``state`` -> ``Start``, ``Stop``, ``Pause`` or ``Resume``, no restart;
- restart policy, timeouts, health check -> ``Update`` in place, no restart;
- file removed -> ``Stop(forget=True)``, or ``Forget`` when nothing runs.
An invalid file never reaches here: its last-known-good spec stays desired.

Crashes, backoff and ``failed`` are the manager's (``reconciler.plan.policy``):
the planner leaves a collector in ``backoff`` to it, and leaves a ``failed``
one alone until its spec changes. Operator overrides (pause, resume) hold until
the spec changes or the opposite action is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.spec.load import PROCESS_IDENTITY_KEYS
from reconciler.spec.models import CollectorSpec
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
class Observed:
    """One collector as the process manager sees it."""

    state: CollectorState
    applied: CollectorSpec | None
    """The spec the current (or last) process was started or updated with."""
    applied_spec_hash: str | None
    applied_process_hash: str | None


# -- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Restart:
    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Update:
    """Apply a spec whose process identity is unchanged; no restart."""

    collector_id: str
    spec: CollectorSpec
    spec_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    collector_id: str
    reason: str
    forget: bool = False


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


Action = Start | Restart | Update | Stop | Pause | Resume | Forget

_ORDER = {Stop: 0, Forget: 1, Pause: 2, Update: 3, Restart: 4, Resume: 5, Start: 6}
"""Stop before start: what frees resources runs first (kopf orchestration)."""

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


def _spec_changed_reason(prefix: str, keys: list[str]) -> str:
    return f"{prefix}: {', '.join(keys)}" if keys else prefix


def _plan_one(  # noqa: C901 - one table of cases, kept together on purpose
    collector_id: str,
    desired: Desired | None,
    observed: Observed | None,
    override: Override | None,
) -> Action | None:
    if desired is None:
        if observed is None:
            return None
        if observed.state in (CollectorState.STOPPED, CollectorState.FAILED):
            return Forget(collector_id, "spec file removed")
        return Stop(collector_id, "spec file removed", forget=True)

    want = effective_state(desired, override)
    if observed is None:
        if want == DesiredState.STOPPED:
            return None
        return Start(collector_id, desired.spec, desired.spec_hash, "new spec")

    state = observed.state
    identity_changed = observed.applied_process_hash != desired.process_hash
    spec_changed = observed.applied_spec_hash != desired.spec_hash
    # Diffing specs costs a model dump each: only when the hashes say they differ.
    keys = changed_keys(observed.applied, desired.spec) if spec_changed else []
    identity_keys = [key for key in keys if key in PROCESS_IDENTITY_KEYS]

    if state in (CollectorState.STARTING, CollectorState.STOPPING):
        return None  # an operation is under way; its end wakes the loop again

    if want == DesiredState.STOPPED:
        if state in (CollectorState.STOPPED,):
            return None
        reason = "stopped by operator" if override is not None else "spec state is stopped"
        return Stop(collector_id, reason)

    if state == CollectorState.FAILED or state == CollectorState.STOPPED:
        if state == CollectorState.FAILED and not spec_changed:
            return None  # stays failed until the spec changes or an operator restarts it
        if spec_changed and observed.applied is not None:
            reason = _spec_changed_reason("spec changed", keys)
        else:
            reason = "spec state is running" if state == CollectorState.STOPPED else "new spec"
        return Start(collector_id, desired.spec, desired.spec_hash, reason)

    if state == CollectorState.BACKOFF:
        if identity_changed:
            reason = _spec_changed_reason("spec changed during backoff", identity_keys)
            return Restart(collector_id, desired.spec, desired.spec_hash, reason)
        if spec_changed:
            return Update(
                collector_id,
                desired.spec,
                desired.spec_hash,
                _spec_changed_reason("spec changed", keys),
            )
        return None  # the manager restarts it when the backoff delay ends

    # running or paused
    if identity_changed:
        reason = _spec_changed_reason("spec changed", identity_keys)
        return Restart(collector_id, desired.spec, desired.spec_hash, reason)
    if spec_changed:
        update_keys = [key for key in keys if key != "state"]
        if update_keys or observed.applied is None:
            return Update(
                collector_id,
                desired.spec,
                desired.spec_hash,
                _spec_changed_reason("spec changed", update_keys),
            )
    if want == DesiredState.PAUSED and state == CollectorState.RUNNING:
        reason = (
            override.reason
            if override is not None and want == override.action
            else ("spec state is paused")
        )
        return Pause(collector_id, reason)
    if want == DesiredState.RUNNING and state == CollectorState.PAUSED:
        reason = (
            override.reason
            if override is not None and want == override.action
            else ("spec state is running")
        )
        return Resume(collector_id, reason)
    if spec_changed:
        # Only `state` changed and the process is already as asked: record it.
        return Update(collector_id, desired.spec, desired.spec_hash, "spec changed: state")
    return None


def plan(
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    now: float,
    *,
    overrides: Mapping[str, Override] | None = None,
) -> list[Action]:
    """Return the actions that make ``observed`` equal ``desired``: at most one per collector.

    Pure: no clock, no I/O, no logging. ``now`` is the caller's clock reading,
    for decisions that depend on time. Stops come before starts.
    """
    del now  # every time-based decision (backoff) lives in the restart policy today
    overrides = overrides or {}
    actions = []
    for collector_id in sorted(desired.keys() | observed.keys()):
        action = _plan_one(
            collector_id,
            desired.get(collector_id),
            observed.get(collector_id),
            overrides.get(collector_id),
        )
        if action is not None:
            actions.append(action)
    actions.sort(key=lambda action: _ORDER[type(action)])
    return actions


def converged(desired: Desired, observed: Observed | None, override: Override | None) -> bool:
    """Whether a collector runs its current spec in its desired state (``reconciler wait``)."""
    want = effective_state(desired, override)
    if observed is None:
        return want == DesiredState.STOPPED
    if observed.applied_spec_hash != desired.spec_hash and want != DesiredState.STOPPED:
        return False
    return observed.state.value == want.value
