"""The planner, without processes: one row per case of DESIGN §2 and §4."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.plan.planner import (
    Desired,
    Exit,
    Forget,
    Observed,
    Override,
    Pause,
    Restart,
    Resume,
    Start,
    Stop,
    Update,
    Wait,
    converged,
    plan,
)
from reconciler.spec import CollectorSpec, process_hash, spec_hash
from reconciler.state import CollectorState as S
from reconciler.state import DesiredState

BASE: dict[str, Any] = {"type": "procmond", "binary_path": "/bin/sleep", "args": ["300"]}


def spec(**changes: Any) -> CollectorSpec:
    return CollectorSpec.model_validate({**BASE, **changes})


def desired(**changes: Any) -> Desired:
    s = spec(**changes)
    return Desired(spec=s, spec_hash=spec_hash(s), process_hash=process_hash(s))


def observed(actual: S, **applied_changes: Any) -> Observed:
    s = spec(**applied_changes)
    return Observed(
        state=actual,
        applied=s,
        applied_spec_hash=spec_hash(s),
        applied_process_hash=process_hash(s),
    )


def crashed(actual: S = S.BACKOFF, *, restarts: int = 1, at: float = 0.0) -> Observed:
    """A collector whose process ended unexpectedly, awaiting the restart policy."""
    o = observed(actual)
    return replace(
        o, exit=Exit(at, "exited with code 1", run_seconds=0.5), consecutive_restarts=restarts
    )


def pause_override(d: Desired) -> Override:
    return Override(DesiredState.PAUSED, d.spec_hash, "paused by operator")


CASES = [
    # (desired, observed, override, expected action type, reason fragment)
    pytest.param(desired(), None, None, Start, "new spec", id="new-file-starts"),
    pytest.param(
        desired(state="paused"), None, None, Start, "new spec", id="new-paused-starts-first"
    ),
    pytest.param(desired(state="stopped"), None, None, None, "", id="new-stopped-does-nothing"),
    pytest.param(desired(), observed(S.RUNNING), None, None, "", id="converged-running"),
    pytest.param(
        desired(args=["301"]),
        observed(S.RUNNING),
        None,
        Restart,
        "spec changed: args",
        id="args-change-restarts",
    ),
    pytest.param(
        desired(env={"A": "1"}), observed(S.RUNNING), None, Restart, "env", id="env-change-restarts"
    ),
    pytest.param(
        desired(binary_path="/bin/true"),
        observed(S.RUNNING),
        None,
        Restart,
        "binary_path",
        id="binary-change-restarts",
    ),
    pytest.param(
        desired(working_dir="/tmp"),
        observed(S.RUNNING),
        None,
        Restart,
        "working_dir",
        id="working-dir-change-restarts",
    ),
    pytest.param(
        desired(user="nobody"),
        observed(S.RUNNING),
        None,
        Restart,
        "user",
        id="user-change-restarts",
    ),
    pytest.param(
        desired(resource_limits={"open_files": 10}),
        observed(S.RUNNING),
        None,
        Restart,
        "resource_limits",
        id="limits-change-restarts",
    ),
    pytest.param(
        desired(args=["301"]),
        observed(S.PAUSED),
        None,
        Restart,
        "args",
        id="args-change-while-paused-restarts",
    ),
    pytest.param(
        desired(max_restarts=9),
        observed(S.RUNNING),
        None,
        Update,
        "max_restarts",
        id="policy-change-in-place",
    ),
    pytest.param(
        desired(graceful_timeout_seconds=3),
        observed(S.RUNNING),
        None,
        Update,
        "graceful_timeout_seconds",
        id="timeout-change-in-place",
    ),
    pytest.param(
        desired(health_check={"tcp": "127.0.0.1:1"}),
        observed(S.RUNNING),
        None,
        Update,
        "health_check",
        id="health-check-change-in-place",
    ),
    pytest.param(
        desired(state="paused"),
        observed(S.RUNNING),
        None,
        Pause,
        "spec state is paused",
        id="state-paused-pauses",
    ),
    pytest.param(
        desired(state="running"),
        observed(S.PAUSED, state="paused"),
        None,
        Resume,
        "spec state is running",
        id="state-running-resumes",
    ),
    pytest.param(
        desired(state="stopped"),
        observed(S.RUNNING),
        None,
        Stop,
        "spec state is stopped",
        id="state-stopped-stops",
    ),
    pytest.param(
        desired(state="stopped"),
        observed(S.PAUSED),
        None,
        Stop,
        "stopped",
        id="paused-then-stopped",
    ),
    pytest.param(
        desired(state="stopped"),
        crashed(),
        None,
        Stop,
        "stopped",
        id="stopped-during-backoff",
    ),
    pytest.param(
        desired(),
        observed(S.STOPPED, state="stopped"),
        None,
        Start,
        "spec changed: state",
        id="stopped-then-running-starts",
    ),
    pytest.param(
        desired(state="stopped"), observed(S.STOPPED), None, None, "", id="stopped-stays-stopped"
    ),
    pytest.param(None, observed(S.RUNNING), None, Stop, "spec file removed", id="deleted-stops"),
    pytest.param(
        None, observed(S.PAUSED), None, Stop, "spec file removed", id="deleted-while-paused-stops"
    ),
    pytest.param(
        None,
        crashed(),
        None,
        Forget,
        "spec file removed",
        id="deleted-during-backoff-is-forgotten",
    ),
    pytest.param(
        None,
        observed(S.FAILED),
        None,
        Forget,
        "spec file removed",
        id="deleted-while-failed-is-forgotten",
    ),
    pytest.param(
        None,
        observed(S.STOPPED),
        None,
        Forget,
        "spec file removed",
        id="deleted-while-stopped-is-forgotten",
    ),
    pytest.param(desired(), observed(S.FAILED), None, None, "", id="failed-stays-failed"),
    pytest.param(
        desired(args=["9"]),
        observed(S.FAILED),
        None,
        Start,
        "spec changed: args",
        id="failed-retried-on-spec-change",
    ),
    pytest.param(
        desired(max_restarts=9),
        observed(S.FAILED),
        None,
        Start,
        "max_restarts",
        id="failed-retried-on-policy-change",
    ),
    pytest.param(desired(), crashed(), None, Wait, "backoff", id="backoff-waits"),
    pytest.param(
        desired(args=["9"]),
        crashed(),
        None,
        Restart,
        "during backoff",
        id="fix-during-backoff-applies-at-once",
    ),
    pytest.param(
        desired(restart_backoff_initial_seconds=5.0),
        crashed(),
        None,
        Wait,
        "backoff 4.8 s before restart 2",  # 5 s less this id's jitter
        id="policy-change-during-backoff-waits-under-the-new-policy",
    ),
    pytest.param(
        desired(max_restarts=1),
        crashed(),
        None,
        Update,
        "max_restarts",
        id="policy-change-that-gives-up-records-the-spec-first",
    ),
    pytest.param(desired(), observed(S.STARTING), None, None, "", id="starting-waits"),
    pytest.param(
        desired(state="stopped"), observed(S.STOPPING), None, None, "", id="stopping-waits"
    ),
]


@pytest.mark.parametrize(("d", "o", "override", "expected", "reason"), CASES)
def test_one_collector(d, o, override, expected, reason) -> None:
    actions = plan(
        {"c": d} if d else {},
        {"c": o} if o else {},
        0.0,
        overrides={"c": override} if override else None,
    )
    if expected is None:
        assert actions == []
        return
    assert len(actions) == 1
    action = actions[0]
    assert type(action) is expected
    assert action.collector_id == "c"
    assert reason in action.reason
    if isinstance(action, Stop):
        assert action.forget == (d is None)
    if isinstance(action, Start | Restart | Update):
        assert action.spec == d.spec and action.spec_hash == d.spec_hash


def test_operator_pause_holds_until_the_spec_changes() -> None:
    d = desired()
    assert plan({"c": d}, {"c": observed(S.RUNNING)}, 0.0, overrides={"c": pause_override(d)}) == [
        Pause("c", "paused by operator")
    ]
    assert plan({"c": d}, {"c": observed(S.PAUSED)}, 0.0, overrides={"c": pause_override(d)}) == []
    edited = desired(args=["301"])
    [action] = plan(
        {"c": edited}, {"c": observed(S.PAUSED)}, 0.0, overrides={"c": pause_override(d)}
    )
    assert isinstance(action, Restart), "a spec change ends the override"


def test_operator_resume_overrides_a_paused_spec() -> None:
    d = desired(state="paused")
    resume = Override(DesiredState.RUNNING, d.spec_hash, "resumed by operator")
    assert plan(
        {"c": d}, {"c": observed(S.PAUSED, state="paused")}, 0.0, overrides={"c": resume}
    ) == [Resume("c", "resumed by operator")]


def test_stop_before_start() -> None:
    actions = plan(
        {"new": desired(), "changed": desired(args=["1"]), "off": desired(state="stopped")},
        {"gone": observed(S.RUNNING), "changed": observed(S.RUNNING), "off": observed(S.RUNNING)},
        0.0,
    )
    kinds = [type(a) for a in actions]
    assert kinds == [Stop, Stop, Restart, Start]
    assert [a.collector_id for a in actions] == ["gone", "off", "changed", "new"]


def test_formatting_only_change_does_nothing() -> None:
    # Same meaning, different TOML layout: equal hashes, so no action.
    d = desired(args=["300"], max_restarts=3)
    assert plan({"c": d}, {"c": observed(S.RUNNING)}, 0.0) == []


def test_plan_is_deterministic_and_pure() -> None:
    d = {f"c{i}": desired(args=[str(i)]) for i in range(50)}
    o = {f"c{i}": observed(S.RUNNING) for i in range(0, 50, 2)}
    assert plan(d, o, 1.0) == plan(d, o, 2.0) == plan(dict(reversed(d.items())), o, 3.0)


@pytest.mark.parametrize(
    ("d", "o", "expected"),
    [
        pytest.param(
            desired(), replace(observed(S.RUNNING), ready=True), True, id="running-ready"
        ),
        pytest.param(desired(), observed(S.RUNNING), False, id="running-not-ready-yet"),
        pytest.param(desired(args=["1"]), observed(S.RUNNING), False, id="old-spec"),
        pytest.param(desired(), observed(S.BACKOFF), False, id="backoff"),
        pytest.param(
            desired(state="paused"), observed(S.PAUSED, state="paused"), True, id="paused"
        ),
        pytest.param(desired(state="stopped"), None, True, id="stopped-never-started"),
        pytest.param(desired(), None, False, id="not-started-yet"),
        pytest.param(desired(), observed(S.FAILED), False, id="failed"),
    ],
)
def test_converged(d: Desired, o: Observed | None, expected: bool) -> None:
    assert converged(d, o, None) is expected


def test_an_unhealthy_collector_to_be_paused_is_paused_not_restarted() -> None:
    """Found by test_plan_converges: a restart for the probe, then the pause, took a pass
    more than three; a paused collector is not probed, so the restart bought nothing."""
    check = {"tcp": "127.0.0.1:9", "failure_threshold": 1}
    d = desired(state="paused", health_check=check)
    o = replace(observed(S.RUNNING, health_check=check), probe_failures=1, probe_detail="refused")
    [action] = plan({"web": d}, {"web": o}, 0.0)
    assert isinstance(action, Pause) and action.reason == "spec state is paused"
    running = desired(health_check=check)
    o = replace(observed(S.RUNNING, health_check=check), probe_failures=1, probe_detail="refused")
    [action] = plan({"web": running}, {"web": o}, 0.0)
    assert isinstance(action, Stop) and action.as_crash
