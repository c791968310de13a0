"""What waits for other collectors: ``after`` (starts after, stops before), waves, held rollouts.

Pure, as the planner it serves: ``plan()`` decides each collector on its own,
then hands the actions here, which holds those that must wait for others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.plan.actions import Action, Hold, Restart, Start, Stop
from reconciler.plan.inputs import HAS_PROCESS, Desired, Observed, Override, effective_state
from reconciler.plan.rollout import RolloutSettings, wave_of
from reconciler.state import CollectorState, DesiredState


def _is_ready(observed: Observed | None) -> bool:
    return observed is not None and observed.ready and observed.state == CollectorState.RUNNING


def _has_process(observed: Observed | None) -> bool:
    return observed is not None and (
        observed.state in HAS_PROCESS or observed.state == CollectorState.STOPPING
    )


def _after_of(desired: Desired | None, observed: Observed | None) -> tuple[str, ...]:
    if desired is not None:
        return desired.spec.after
    if observed is not None and observed.applied is not None:
        return observed.applied.after
    return ()


def gate(
    actions: list[Action],
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    overrides: Mapping[str, Override],
    settings: RolloutSettings,
) -> list[Action]:
    """Hold what must wait for others: ``after`` (starts after, stops before), then waves."""
    stops = {a.collector_id for a in actions if isinstance(a, Stop) and not a.as_crash}
    going = _dependents_going_down(stops, desired, observed, overrides) if stops else {}
    result: list[Action] = []
    restarts: list[Restart] = []
    for action in actions:
        cid = action.collector_id
        if isinstance(action, Stop) and going.get(cid):
            first = ", ".join(sorted(going[cid]))
            result.append(Hold(cid, action, f"waiting for {first} to stop first", "after"))
            continue
        if (isinstance(action, Start) and not action.automatic) or isinstance(action, Restart):
            pending = [name for name in action.spec.after if not _is_ready(observed.get(name))]
            if pending:
                names = ", ".join(pending)
                verb = "is" if len(pending) == 1 else "are"
                result.append(Hold(cid, action, f"waiting until {names} {verb} ready", "after"))
                continue
        if isinstance(action, Restart) and settings.max_unavailable > 0:
            seen = observed.get(cid)
            if seen is not None and seen.state in (CollectorState.RUNNING, CollectorState.PAUSED):
                if not _unavailable(seen):  # already down: another restart costs nothing
                    restarts.append(action)
                    continue
        result.append(action)
    if restarts:
        result.extend(_waves(restarts, desired, observed, settings.max_unavailable))
    return result


def _dependents_going_down(
    stops: set[str],
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    overrides: Mapping[str, Override],
) -> dict[str, list[str]]:
    """For each collector being stopped: who starts after it and is on its way down too."""
    going: dict[str, list[str]] = {}
    for cid in desired.keys() | observed.keys():
        d = desired.get(cid)
        # Only a collector whose file is gone needs its observed state read here.
        names = _after_of(d, observed.get(cid) if d is None else None)
        after = [name for name in names if name in stops]
        if not after:
            continue
        o = observed.get(cid)
        down = d is None or effective_state(d, overrides.get(cid)) == DesiredState.STOPPED
        if down and _has_process(o):
            for name in after:
                going.setdefault(name, []).append(cid)
    return going


def _unavailable(observed: Observed) -> bool:
    """Restarted for an open rollout and not ready now, or crashed since it began: one of
    ``max_unavailable`` (a crash loop is down, even while one of its runs is up)."""
    rollout = observed.rollout
    if rollout is None or not rollout.unavailable or rollout.failed:
        return False
    return not observed.ready or observed.consecutive_restarts > 0


def _waves(
    restarts: list[Restart],
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    max_unavailable: int,
) -> list[Action]:
    """At most ``max_unavailable`` restarts for spec changes at once; none while one failed."""
    restarting = 0
    failed: list[str] = []
    for cid, seen in observed.items():
        rollout = seen.rollout
        if _unavailable(seen):
            restarting += 1
        d = desired.get(cid)
        if d is None:
            continue
        if rollout is not None and rollout.failed and rollout.spec_hash == d.spec_hash:
            failed.append(cid)
        elif seen.rejected is not None and seen.rejected.spec_hash == d.spec_hash:
            failed.append(cid)
    result: list[Action] = []
    waiting = 0
    for action in sorted(restarts, key=lambda a: a.collector_id):
        cid = action.collector_id
        if failed:
            names = ", ".join(sorted(failed))
            result.append(Hold(cid, action, f"rollout held: {names} failed", "held"))
        elif restarting < max_unavailable:
            restarting += 1
            result.append(replace(action, wave=1))
        else:
            wave = wave_of(waiting, max_unavailable=max_unavailable, restarting=max_unavailable)
            waiting += 1
            reason = f"waiting for its wave (max_unavailable = {max_unavailable})"
            result.append(Hold(cid, action, reason, "wave", wave=wave))
    return result
