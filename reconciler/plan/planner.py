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

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from reconciler.plan.actions import (
    ORDER,
    Action,
    Forget,
    GiveUp,
    Pause,
    Ready,
    Restart,
    Resume,
    Rollback,
    RolloutDone,
    RolloutFailed,
    Start,
    Stop,
    Update,
    Wait,
)
from reconciler.plan.gate import gate
from reconciler.plan.inputs import (
    HAS_PROCESS,
    Desired,
    Exit,
    Observed,
    Override,
    changed_keys,
    effective_state,
)
from reconciler.plan.policy import NoRestart, RestartAfter, RestartPolicy, decide_restart
from reconciler.plan.rollout import (
    ROLLOUT_SETTLE_SECONDS,
    Rollout,
    RolloutSettings,
)
from reconciler.spec.identity import PROCESS_IDENTITY_KEYS
from reconciler.spec.models import ProcessManagerConfig
from reconciler.state import CollectorState, DesiredState

__all__ = [
    "Desired",
    "Exit",
    "Forget",
    "Observed",
    "Override",
    "Pause",
    "Progress",
    "Restart",
    "Resume",
    "Start",
    "Stop",
    "Update",
    "Wait",
    "changed_keys",
    "converged",
    "effective_state",
    "plan",
]


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

    @property
    def new_content(self) -> bool:
        """The spec was never seen ready: starting it is a rollout."""
        good = self.observed.good
        return good is None or good.spec_hash != self.desired.spec_hash

    def start(self, reason: str, *, automatic: bool = False, attempt: int = 0) -> Start:
        d = self.desired
        rollout = not automatic and self.new_content
        return Start(
            self.collector_id, d.spec, d.spec_hash, d.process_hash, reason, automatic, attempt,
            rollout,
        )  # fmt: skip

    def restart(self, reason: str) -> Restart:
        d = self.desired
        return Restart(
            self.collector_id, d.spec, d.spec_hash, d.process_hash, reason, self.new_content
        )

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
    if observed.state in HAS_PROCESS or observed.state == CollectorState.STOPPING:
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
        and want == DesiredState.RUNNING  # to be paused: pause it, a restart first is waste
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


def _rolling(case: _Case) -> Rollout | None:
    """The open rollout of the desired content (not failed)."""
    rollout = case.observed.rollout
    if rollout is None or rollout.failed or rollout.spec_hash != case.desired.spec_hash:
        return None
    return rollout


def _deadline(case: _Case, rollout: Rollout | None) -> float | None:
    if rollout is None:
        return None
    return rollout.since + case.desired.spec.rollout_timeout_seconds


def _rollout_end(
    case: _Case, rollout: Rollout, settings: RolloutSettings, now: float
) -> Action | None:
    """A rollout at its deadline: done if ready, else failed; given up on: failed at once.

    A failed one rolls back to the spec that was ready when it began (with
    ``rollback``), or is recorded as failed.
    """
    observed, spec = case.observed, case.desired.spec
    gave_up = observed.gave_up or observed.state == CollectorState.FAILED
    deadline = rollout.since + spec.rollout_timeout_seconds
    if not gave_up and now < deadline:
        return None
    if not gave_up and observed.ready:
        return RolloutDone(
            case.collector_id,
            case.desired.spec_hash,
            f"ready through rollout_timeout_seconds = {spec.rollout_timeout_seconds:g}",
        )
    last = f" (last: {observed.exit.description})" if observed.exit is not None else ""
    if gave_up:
        why = f"failed before it was ready: {observed.last_error or 'gave up'}"
    else:
        why = f"not ready within rollout_timeout_seconds = {spec.rollout_timeout_seconds:g}"
        why += last
    rollback = settings.rollback if spec.rollback is None else spec.rollback
    target = rollout.back_to
    if rollback and target is not None and target.spec_hash != case.desired.spec_hash:
        return Rollback(
            case.collector_id,
            target.spec,
            target.spec_hash,
            target.process_hash,
            case.desired.spec_hash,
            f"rollout {why}; rolled back to the last ready spec",
        )
    nothing = "; no earlier ready spec to roll back to" if rollback else ""
    return RolloutFailed(case.collector_id, case.desired.spec_hash, f"rollout {why}{nothing}")


def _readiness(case: _Case, rollout: Rollout | None, now: float) -> Action | None:
    """A running process not yet ready: ``Ready`` once it is, else when to look again."""
    observed, spec = case.observed, case.desired.spec
    if observed.state != CollectorState.RUNNING or observed.started_at is None:
        return None
    if observed.ready:
        return None
    # A rollout's process must also outlive ROLLOUT_SETTLE_SECONDS: bad args exit at once,
    # and "ready" the instant after exec would let `wait` and the next wave through.
    settle = spec.min_ready_seconds if rollout is None else max(
        spec.min_ready_seconds, ROLLOUT_SETTLE_SECONDS
    )
    ready_at = observed.started_at + settle
    probed = spec.ready_check is None or observed.ready_probe_passed
    if probed and now >= ready_at:
        gated = spec.ready_check is not None or settle > 0
        reason = "ready_check passed" if spec.ready_check is not None else "running"
        if settle > 0:
            reason += f" for {settle:g} s"
        return Ready(case.collector_id, case.desired.spec_hash, reason, announce=gated)
    times = [t for t in (ready_at if probed else None, _deadline(case, rollout)) if t is not None]
    if not times:
        return None  # the ready_check's pass wakes the controller
    waiting = "ready_check" if not probed else f"running {settle:g} s"
    return Wait(case.collector_id, min(times), f"not ready yet: {waiting}", 0, backoff=False)


def _plan_one(
    collector_id: str,
    desired: Desired | None,
    observed: Observed | None,
    override: Override | None,
    defaults: ProcessManagerConfig,
    settings: RolloutSettings,
    now: float,
) -> Action | None:
    if desired is None:
        return _gone(collector_id, observed)
    want = effective_state(desired, override)
    if observed is None:
        if want == DesiredState.STOPPED:
            return None
        return Start(
            collector_id,
            desired.spec,
            desired.spec_hash,
            desired.process_hash,
            "new spec",
            rollout=True,
        )
    rejected, good = observed.rejected, observed.good
    if rejected is not None and good is not None and rejected.spec_hash == desired.spec_hash:
        desired = good  # not tried again until the file changes
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
    rollout = _rolling(case)
    if rollout is not None and not spec_changed:
        end = _rollout_end(case, rollout, settings, now)
        if end is not None:
            return end
    action = _decide(case, defaults, now) or _readiness(case, rollout, now)
    return _until_deadline(case, action, rollout)


def _until_deadline(case: _Case, action: Action | None, rollout: Rollout | None) -> Action | None:
    """An open rollout looks again at its deadline, whatever else it waits for."""
    deadline = _deadline(case, rollout)
    if deadline is None:
        return action
    if action is None:
        return Wait(case.collector_id, deadline, "rollout under way", 0, backoff=False)
    if isinstance(action, Wait | Ready):
        return replace(action, recheck=deadline)
    return action


def _decide(case: _Case, defaults: ProcessManagerConfig, now: float) -> Action | None:
    """What the spec, the restart policy and the probes ask for (§2, §4)."""
    observed, state = case.observed, case.observed.state
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
    settings: RolloutSettings | None = None,
    only: Collection[str] | None = None,
) -> list[Action]:
    """Return the actions that make ``observed`` equal ``desired``: at most one per collector.

    Pure: no clock, no I/O, no logging. ``now`` is the caller's clock reading
    (backoff deadlines are compared with it); ``defaults`` the
    ``[process_manager]`` table that fills what specs leave unset;
    ``settings`` the ``[reconciler]`` rollout keys. ``only``: plan these
    collectors alone (the others are read, for ``after`` and waves, not
    planned). Stops come before starts; ``Wait``s and ``Hold``s come last.
    """
    overrides = overrides or {}
    defaults = defaults if defaults is not None else _DEFAULTS
    settings = settings if settings is not None else _SETTINGS
    if only is None:
        ids = sorted(desired.keys() | observed.keys())
    else:
        ids = sorted(cid for cid in only if cid in desired or cid in observed)
    actions = []
    for collector_id in ids:
        action = _plan_one(
            collector_id,
            desired.get(collector_id),
            observed.get(collector_id),
            overrides.get(collector_id),
            defaults,
            settings,
            now,
        )
        if action is not None:
            actions.append(action)
    actions = gate(actions, desired, observed, overrides, settings)
    actions.sort(key=lambda action: ORDER[type(action)])
    return actions


_DEFAULTS = ProcessManagerConfig()
_SETTINGS = RolloutSettings()


class Progress(Protocol):
    """What ``converged`` reads of a collector: an ``Observed``, or the executor's record."""

    @property
    def state(self) -> CollectorState: ...
    @property
    def applied_spec_hash(self) -> str | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def rollout(self) -> Rollout | None: ...
    @property
    def consecutive_restarts(self) -> int: ...


def converged(desired: Desired, observed: Progress | None, override: Override | None) -> bool:
    """Whether a collector runs its current spec in its desired state, and (running) is
    ready: what ``reconciler wait`` waits for, as ``kubectl rollout status`` does."""
    want = effective_state(desired, override)
    if observed is None:
        return want == DesiredState.STOPPED
    if observed.applied_spec_hash != desired.spec_hash and want != DesiredState.STOPPED:
        return False
    if want == DesiredState.RUNNING and not observed.ready:
        return False
    rollout = observed.rollout
    if (
        rollout is not None
        and not rollout.failed
        and rollout.spec_hash == desired.spec_hash
        and observed.consecutive_restarts > 0
    ):
        return False  # crashed since its rollout began: ready now, maybe not for long
    return observed.state == want  # type: ignore[comparison-overlap]  # StrEnums: values
