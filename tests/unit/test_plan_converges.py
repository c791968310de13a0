"""Property: plan() converges. For any desired and observed states, carrying out its
actions on a model of the driver and planning again reaches, within three passes,
a state for which plan() returns only ``Wait``s or nothing — and stays there."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan import (
    Action,
    Desired,
    Exit,
    Forget,
    GiveUp,
    Observed,
    Override,
    Pause,
    Restart,
    Resume,
    Start,
    Stop,
    Update,
    Wait,
    plan,
)
from reconciler.spec import CollectorSpec, process_hash, spec_hash
from reconciler.state import CollectorState, DesiredState

NOW = 100.0
SPECS = [
    {"args": ["a"]},
    {"args": ["b"]},
    {"args": ["a"], "max_restarts": 0},
    {"args": ["a"], "auto_restart": False},
    {"args": ["a"], "health_check": {"exec": ["probe"], "failure_threshold": 2}},
    {"args": ["a"], "graceful_timeout_seconds": 3},
]


def make_spec(index: int, state: str) -> CollectorSpec:
    return CollectorSpec.model_validate(
        {"type": "web", "binary_path": "/bin/web", "state": state, **SPECS[index]}
    )


def make_desired(index: int, state: str) -> Desired:
    spec = make_spec(index, state)
    return Desired(spec, spec_hash(spec), process_hash(spec))


QUIET = (CollectorState.RUNNING, CollectorState.PAUSED, CollectorState.STOPPED)


@st.composite
def observed_states(draw: Any) -> Observed:
    state = draw(
        st.sampled_from(
            [
                CollectorState.RUNNING,
                CollectorState.PAUSED,
                CollectorState.STOPPED,
                CollectorState.BACKOFF,
                CollectorState.FAILED,
            ]
        )
    )
    applied = draw(st.none() | st.integers(0, len(SPECS) - 1))
    spec = make_spec(applied, "running") if applied is not None else None
    exit_ = None
    if state in (CollectorState.STOPPED, CollectorState.BACKOFF) and draw(st.booleans()):
        exit_ = Exit(
            at=draw(st.floats(0, NOW)),
            description="exited with code 1",
            run_seconds=draw(st.floats(0, 120)),
            clean=draw(st.booleans()),
        )
    return Observed(
        state=state,
        applied=spec,
        applied_spec_hash=spec_hash(spec) if spec else None,
        applied_process_hash=process_hash(spec) if spec else None,
        exit=exit_,
        consecutive_restarts=draw(st.integers(0, 5)),
        probe_failures=draw(st.integers(0, 3)) if state == CollectorState.RUNNING else 0,
        gave_up=state in (CollectorState.FAILED, CollectorState.STOPPED)
        and exit_ is None
        and draw(st.booleans()),
    )


ids = st.sampled_from(["a", "b", "c", "d"])
desireds = st.dictionaries(
    ids,
    st.builds(
        make_desired,
        st.integers(0, len(SPECS) - 1),
        st.sampled_from(["running", "paused", "stopped"]),
    ),
)
observeds = st.dictionaries(ids, observed_states())


def carry_out(action: Action, observed: dict[str, Observed], desired: dict[str, Desired]) -> None:
    """What an ideal driver and executor make of one action."""
    cid = action.collector_id
    current = observed.get(cid)
    match action:
        case Start() | Restart():
            observed[cid] = Observed(
                CollectorState.RUNNING,
                action.spec,
                action.spec_hash,
                action.process_hash,
                consecutive_restarts=action.attempt if isinstance(action, Start) else 0,
            )
        case Update():
            assert current is not None
            observed[cid] = replace(
                current,
                applied=action.spec,
                applied_spec_hash=action.spec_hash,
                applied_process_hash=action.process_hash,
            )
        case Stop(forget=True) | Forget():
            observed.pop(cid, None)
        case Stop(as_crash=True):
            assert current is not None
            observed[cid] = replace(
                current,
                state=CollectorState.STOPPED,
                probe_failures=0,
                exit=Exit(NOW, "unhealthy: probe", run_seconds=10.0),
            )
        case Stop():
            assert current is not None
            observed[cid] = replace(current, state=CollectorState.STOPPED, exit=None)
        case Pause():
            assert current is not None
            observed[cid] = replace(current, state=CollectorState.PAUSED)
        case Resume():
            assert current is not None
            observed[cid] = replace(current, state=CollectorState.RUNNING)
        case GiveUp():
            assert current is not None
            state = CollectorState.STOPPED if action.clean else CollectorState.FAILED
            observed[cid] = replace(current, state=state, exit=None, gave_up=True)
        case Wait():
            assert current is not None
            observed[cid] = replace(current, state=CollectorState.BACKOFF)


@settings(max_examples=300, deadline=None)
@given(desired=desireds, observed=observeds, paused_by_operator=st.sets(ids))
def test_plan_converges_within_three_passes(
    desired: dict[str, Desired], observed: dict[str, Observed], paused_by_operator: set[str]
) -> None:
    overrides = {
        cid: Override(DesiredState.PAUSED, d.spec_hash, "paused by operator")
        for cid, d in desired.items()
        if cid in paused_by_operator
    }
    observed = dict(observed)
    for _ in range(3):
        actions = plan(desired, observed, NOW, overrides=overrides)
        assert len({a.collector_id for a in actions}) == len(actions), "one action a collector"
        for action in actions:
            carry_out(action, observed, desired)
    final = plan(desired, observed, NOW, overrides=overrides)
    assert all(isinstance(a, Wait) for a in final), final
    # Converged means stable: carrying out the waits changes nothing.
    for action in final:
        carry_out(action, observed, desired)
    assert plan(desired, observed, NOW, overrides=overrides) == final
