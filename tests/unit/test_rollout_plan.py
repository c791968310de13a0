"""Readiness and rollouts in the planner, without processes: one row per case of DESIGN §4.

Readiness (``min_ready_seconds``, ``ready_check``), the rollout deadline and
rollback, rejected content, ``after`` (starts after, stops before) and
``max_unavailable`` waves — each a decision of ``plan()``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.plan.actions import (
    Hold,
    Ready,
    Restart,
    Rollback,
    RolloutDone,
    RolloutFailed,
    Start,
    Stop,
    Wait,
    describe,
)
from reconciler.plan.planner import Desired, Exit, Observed, plan
from reconciler.plan.rollout import Rejected, Rollout, RolloutSettings, wave_of
from reconciler.spec import CollectorSpec, process_hash, spec_hash
from reconciler.state import CollectorState as S

BASE: dict[str, Any] = {"type": "procmond", "binary_path": "/bin/sleep", "args": ["300"]}
GOOD_ARGS = ["300"]
BAD_ARGS = ["--bad"]


def desired(**changes: Any) -> Desired:
    s = CollectorSpec.model_validate({**BASE, **changes})
    return Desired(spec=s, spec_hash=spec_hash(s), process_hash=process_hash(s))


def running(d: Desired, *, started_at: float = 0.0, **facts: Any) -> Observed:
    """A process runs spec ``d`` since ``started_at``."""
    return Observed(
        state=facts.pop("state", S.RUNNING),
        applied=d.spec,
        applied_spec_hash=d.spec_hash,
        applied_process_hash=d.process_hash,
        started_at=started_at,
        **facts,
    )


def ready(d: Desired, **facts: Any) -> Observed:
    """Running ``d``, ready, and ``d`` is its last ready spec."""
    return running(d, ready=True, good=d, **facts)


def one(actions: list[Any]) -> Any:
    assert len(actions) == 1, actions
    return actions[0]


# -- readiness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "facts", "now", "expected"),
    [
        pytest.param({}, {}, 0.0, Ready(_id := "web", "", "running", announce=False), id="at-once"),
        pytest.param({"min_ready_seconds": 5}, {}, 3.0, Wait, id="min-ready-not-yet"),
        pytest.param({"min_ready_seconds": 5}, {}, 5.0, Ready, id="min-ready-elapsed"),
        pytest.param({"ready_check": {"tcp": "127.0.0.1:1"}}, {}, 9.0, None, id="probe-pending"),
        pytest.param(
            {"ready_check": {"tcp": "127.0.0.1:1"}},
            {"ready_probe_passed": True},
            0.0,
            Ready,
            id="probe-passed",
        ),
        pytest.param(
            {"ready_check": {"tcp": "127.0.0.1:1"}, "min_ready_seconds": 5},
            {"ready_probe_passed": True},
            4.0,
            Wait,
            id="probe-passed-min-ready-not-yet",
        ),
        pytest.param({}, {"ready": True}, 0.0, None, id="already-ready"),
        pytest.param(
            {"state": "paused"}, {"state": S.PAUSED}, 0.0, None, id="paused-not-made-ready"
        ),
    ],
)
def test_readiness(spec: dict[str, Any], facts: dict[str, Any], now: float, expected: Any) -> None:
    d = desired(**spec)
    actions = plan({"web": d}, {"web": running(d, **facts)}, now)
    if expected is None:
        assert actions == []
        return
    action = one(actions)
    if isinstance(expected, type):
        assert isinstance(action, expected)
    else:
        assert isinstance(action, Ready) and action.announce == expected.announce
    if isinstance(action, Wait):
        assert not action.backoff and action.until == 5.0
    if isinstance(action, Ready):
        assert action.spec_hash == d.spec_hash


def test_a_probe_or_min_ready_is_announced_an_instant_one_is_not() -> None:
    gated = desired(min_ready_seconds=1)
    assert one(plan({"web": gated}, {"web": running(gated)}, 2.0)).announce
    plain = desired()
    assert not one(plan({"web": plain}, {"web": running(plain)}, 2.0)).announce


# -- rollouts --------------------------------------------------------------------------

GOOD = desired(args=GOOD_ARGS)
PROBE = {"tcp": "127.0.0.1:9"}
BAD = desired(args=BAD_ARGS, rollout_timeout_seconds=10, rollback=True, ready_check=PROBE)
BAD_NO_ROLLBACK = desired(args=BAD_ARGS, rollout_timeout_seconds=10, ready_check=PROBE)


def rolling(
    d: Desired, *, since: float = 0.0, good: Desired | None = GOOD, **facts: Any
) -> Observed:
    """Running ``d`` for a rollout begun at ``since``; ``good`` was the last ready spec."""
    return running(
        d, started_at=since, good=good, rollout=Rollout(d.spec_hash, since, True, good), **facts
    )


def test_a_start_of_content_never_ready_is_a_rollout_and_a_revert_is_not() -> None:
    restart = one(plan({"web": BAD}, {"web": ready(GOOD)}, 0.0))
    assert isinstance(restart, Restart) and restart.rollout
    # Back to the content it was last ready with: nothing to roll out.
    revert = one(plan({"web": GOOD}, {"web": rolling(BAD)}, 1.0))
    assert isinstance(revert, Restart) and not revert.rollout
    new = one(plan({"web": GOOD}, {}, 0.0))
    assert isinstance(new, Start) and new.rollout
    crash = Exit(0.0, "exited with code 1", run_seconds=100.0)
    automatic = one(
        plan({"web": GOOD}, {"web": replace(ready(GOOD), state=S.STOPPED, exit=crash)}, 1.0)
    )
    assert isinstance(automatic, Start) and automatic.automatic and not automatic.rollout


@pytest.mark.parametrize(
    ("d", "observed", "now", "expected", "fragment"),
    [
        pytest.param(BAD, rolling(BAD), 5.0, Wait, "not ready yet", id="before-deadline-waits"),
        pytest.param(
            BAD, rolling(BAD), 10.0, Rollback, "not ready within rollout_timeout_seconds = 10",
            id="not-ready-by-deadline-rolls-back",
        ),
        pytest.param(
            BAD_NO_ROLLBACK, rolling(BAD_NO_ROLLBACK), 10.0, RolloutFailed, "not ready within",
            id="without-rollback-only-fails",
        ),
        pytest.param(
            BAD, rolling(BAD, good=None), 10.0, RolloutFailed, "no earlier ready spec",
            id="rollback-target-gone",
        ),
        pytest.param(
            BAD,
            replace(
                rolling(BAD), state=S.BACKOFF, started_at=None,
                exit=Exit(3.0, "exited with code 2", run_seconds=0.1), consecutive_restarts=1,
            ),
            3.5, Wait, "backoff", id="crash-during-rollout-backs-off",
        ),
        pytest.param(
            BAD,
            replace(rolling(BAD), state=S.FAILED, started_at=None, gave_up=True),
            4.0, Rollback, "failed before it was ready", id="given-up-before-deadline-rolls-back",
        ),
        pytest.param(
            desired(args=["--third"], rollback=True), rolling(BAD), 11.0, Restart,
            "spec changed: args", id="file-changed-again-restarts-with-the-newest",
        ),
        pytest.param(
            BAD, replace(rolling(BAD), ready=True), 9.0, Wait, "rollout under way",
            id="ready-waits-out-the-window",
        ),
        pytest.param(
            BAD, replace(rolling(BAD), ready=True), 10.0, RolloutDone, "ready through",
            id="ready-at-the-deadline-is-done",
        ),
    ],
)  # fmt: skip
def test_rollouts(d: Desired, observed: Observed, now: float, expected: Any, fragment: str) -> None:
    actions = plan({"web": d}, {"web": observed}, now)
    if expected is None:
        assert actions == []
        return
    action = one(actions)
    assert isinstance(action, expected), action
    assert fragment in action.reason
    if isinstance(action, Rollback):
        assert action.spec_hash == GOOD.spec_hash and action.rejected_hash == d.spec_hash
        assert action.spec.args == tuple(GOOD_ARGS)


def test_a_crash_in_backoff_looks_again_at_the_rollout_deadline() -> None:
    crashed = replace(
        rolling(BAD, since=0.0),
        state=S.BACKOFF,
        started_at=None,
        exit=Exit(9.0, "exited with code 2", run_seconds=0.1),
        consecutive_restarts=2,
    )
    wait = one(plan({"web": BAD}, {"web": crashed}, 9.5))
    assert isinstance(wait, Wait) and wait.backoff
    assert wait.until > 10.0 and wait.wake_at == 10.0, "the deadline comes before the backoff ends"
    assert isinstance(one(plan({"web": BAD}, {"web": crashed}, 10.0)), Rollback)


def test_the_manager_default_rollback_applies_and_a_spec_key_overrides_it() -> None:
    inherit = desired(args=BAD_ARGS, rollout_timeout_seconds=10, ready_check=PROBE)
    on = RolloutSettings(rollback=True)
    assert isinstance(one(plan({"w": inherit}, {"w": rolling(inherit)}, 10, settings=on)), Rollback)
    off = desired(args=BAD_ARGS, rollout_timeout_seconds=10, rollback=False, ready_check=PROBE)
    assert isinstance(one(plan({"w": off}, {"w": rolling(off)}, 10, settings=on)), RolloutFailed)


def test_a_failed_rollout_once_recorded_follows_the_restart_policy() -> None:
    failed = replace(
        rolling(BAD_NO_ROLLBACK), rollout=Rollout(BAD_NO_ROLLBACK.spec_hash, 0, True, failed=True)
    )
    assert plan({"web": BAD_NO_ROLLBACK}, {"web": failed}, 60.0) == []
    # Ready late is ready all the same: the failure ends with it.
    late = replace(failed, ready_probe_passed=True)
    assert isinstance(one(plan({"web": BAD_NO_ROLLBACK}, {"web": late}, 61.0)), Ready)


def test_rejected_content_is_not_tried_again_until_the_file_changes() -> None:
    rejected = Rejected(BAD.spec_hash, "rollout not ready", 0.0)
    back = replace(ready(GOOD), rejected=rejected)
    assert plan({"web": BAD}, {"web": back}, 100.0) == [], "the good spec keeps running"
    fixed = desired(args=["--fixed"], rollback=True)
    restart = one(plan({"web": fixed}, {"web": back}, 100.0))
    assert isinstance(restart, Restart) and restart.rollout and restart.spec_hash == fixed.spec_hash


# -- after -----------------------------------------------------------------------------

A = desired(args=["a"])
B_AFTER_A = desired(args=["b"], after=["a"])


@pytest.mark.parametrize(
    ("observed_a", "expected"),
    [
        pytest.param(None, Hold, id="dependency-not-started"),
        pytest.param(running(A), Hold, id="dependency-running-not-ready"),
        pytest.param(running(A, state=S.PAUSED, ready=False), Hold, id="dependency-paused"),
        pytest.param(ready(A), Start, id="dependency-ready"),
    ],
)
def test_a_start_waits_for_what_it_starts_after(
    observed_a: Observed | None, expected: type
) -> None:
    observed = {"a": observed_a} if observed_a is not None else {}
    actions = plan({"a": A, "b": B_AFTER_A}, observed, 0.0, only={"b"})
    action = one(actions)
    assert isinstance(action, expected) and action.collector_id == "b"
    if isinstance(action, Hold):
        assert action.cause == "after" and action.reason == "waiting until a is ready"
        assert isinstance(action.held, Start)
        assert describe(action) == "start b (new spec); held: waiting until a is ready"


def test_a_whole_cold_start_starts_the_dependency_first() -> None:
    actions = plan({"a": A, "b": B_AFTER_A}, {}, 0.0)
    assert [type(a) for a in actions] == [Start, Hold]
    assert actions[0].collector_id == "a"


def test_a_spec_change_restart_waits_for_its_dependency_and_a_crash_restart_does_not() -> None:
    b_new = desired(args=["b2"], after=["a"])
    observed = {"a": running(A), "b": ready(B_AFTER_A)}
    assert isinstance(one(plan({"a": A, "b": b_new}, observed, 0, only={"b"})), Hold)
    crash = Exit(0.0, "exited with code 1", run_seconds=100.0)
    down = {"a": running(A), "b": replace(ready(B_AFTER_A), state=S.STOPPED, exit=crash)}
    restart = one(plan({"a": A, "b": B_AFTER_A}, down, 1.0, only={"b"}))
    assert isinstance(restart, Start) and restart.automatic


def test_stops_go_in_reverse_order_and_independent_ones_at_once() -> None:
    observed = {"a": ready(A), "b": ready(B_AFTER_A), "c": ready(desired(args=["c"]))}
    actions = plan({}, observed, 0.0)
    by_id = {a.collector_id: a for a in actions}
    assert isinstance(by_id["b"], Stop) and isinstance(by_id["c"], Stop)
    assert isinstance(by_id["a"], Hold) and by_id["a"].reason == "waiting for b to stop first"
    # Once b is down, a goes.
    del observed["b"]
    assert {a.collector_id for a in plan({}, observed, 0.0) if isinstance(a, Stop)} == {"a", "c"}


def test_a_dependency_stops_at_once_when_its_dependent_stays() -> None:
    observed = {"a": ready(A), "b": ready(B_AFTER_A)}
    actions = plan({"b": B_AFTER_A}, observed, 0.0)
    assert isinstance(one(actions), Stop) and actions[0].collector_id == "a"


# -- waves -----------------------------------------------------------------------------


def changed_fleet(count: int) -> tuple[dict[str, Desired], dict[str, Observed]]:
    old, new = desired(args=["old"]), desired(args=["new"])
    ids = [f"c{n:02}" for n in range(count)]
    return {cid: new for cid in ids}, {cid: ready(old) for cid in ids}


def test_max_unavailable_restarts_in_waves() -> None:
    want, seen = changed_fleet(5)
    actions = plan(want, seen, 0.0, settings=RolloutSettings(max_unavailable=2))
    restarts = [a for a in actions if isinstance(a, Restart)]
    holds = [a for a in actions if isinstance(a, Hold)]
    assert [a.collector_id for a in restarts] == ["c00", "c01"]
    assert all(a.wave == 1 for a in restarts)
    assert [(h.collector_id, h.cause, h.wave) for h in holds] == [
        ("c02", "wave", 2), ("c03", "wave", 2), ("c04", "wave", 3),
    ]  # fmt: skip
    assert describe(holds[2]) == "restart c04 in wave 3 (spec changed: args)"


def test_no_limit_restarts_every_changed_collector_at_once() -> None:
    want, seen = changed_fleet(5)
    assert all(isinstance(a, Restart) for a in plan(want, seen, 0.0))


def test_a_collector_under_way_takes_a_slot_and_one_ready_frees_it() -> None:
    want, seen = changed_fleet(3)
    new = want["c00"]
    seen["c00"] = rolling(new)
    limited = RolloutSettings(max_unavailable=1)
    actions = plan(want, seen, 0.0, settings=limited)
    assert all(isinstance(a, Hold) for a in actions if a.collector_id != "c00")
    seen["c00"] = ready(new)
    actions = plan(want, seen, 1.0, settings=limited)
    assert [a.collector_id for a in actions if isinstance(a, Restart)] == ["c01"]


def rolled_back(d: Desired) -> Observed:
    return replace(ready(GOOD), rejected=Rejected(d.spec_hash, "x", 0))


def failed_rollout(d: Desired) -> Observed:
    return replace(rolling(d), rollout=Rollout(d.spec_hash, 0, True, GOOD, failed=True))


@pytest.mark.parametrize("failed", [rolled_back, failed_rollout])
def test_a_failed_rollout_holds_the_waves(failed: Any) -> None:
    want, seen = changed_fleet(3)
    want["bad"] = BAD
    seen["bad"] = failed(BAD)
    actions = plan(
        want, seen, 0.0, settings=RolloutSettings(max_unavailable=5), only=set(want) - {"bad"}
    )
    assert {a.cause for a in actions if isinstance(a, Hold)} == {"held"}
    assert len(actions) == 3 and actions[0].reason == "rollout held: bad failed"


def test_new_and_down_collectors_are_not_held_by_waves() -> None:
    want, seen = changed_fleet(2)
    want["fresh"] = desired(args=["fresh"])
    crash = Exit(0.0, "exited with code 1", run_seconds=100.0)
    seen["c01"] = replace(seen["c01"], state=S.STOPPED, exit=crash, started_at=None, ready=False)
    actions = plan(want, seen, 0.0, settings=RolloutSettings(max_unavailable=1))
    kinds = {a.collector_id: type(a) for a in actions}
    assert kinds == {"c00": Restart, "c01": Restart, "fresh": Start}


@pytest.mark.parametrize(
    ("position", "max_unavailable", "restarting", "wave"),
    [
        (0, 2, 0, 1),
        (1, 2, 0, 1),
        (2, 2, 0, 2),
        (4, 2, 0, 3),
        (0, 2, 2, 2),
        (0, 3, 1, 1),
        (2, 3, 1, 2),
    ],
)
def test_wave_of(position: int, max_unavailable: int, restarting: int, wave: int) -> None:
    assert wave_of(position, max_unavailable=max_unavailable, restarting=restarting) == wave


# -- diff ------------------------------------------------------------------------------


def test_diff_shows_the_waves_and_what_waits_for_after() -> None:
    from reconciler.plan.diff import diff, observed_from

    old = {f"c{n}": desired(args=["old"]) for n in range(5)}
    new = {f"c{n}": desired(args=["new"]) for n in range(5)}
    new["late"] = desired(args=["late"], after=["fresh"])
    new["fresh"] = desired(args=["fresh"])
    lines = {line.collector_id: line for line in diff(
        new, observed_from(old), 0.0, settings=RolloutSettings(max_unavailable=2)
    )}  # fmt: skip
    assert [lines[f"c{n}"].wave for n in range(5)] == [1, 1, 2, 2, 3]
    assert lines["c4"].line == "restart c4 in wave 3 (spec changed: args)"
    assert lines["c4"].action == "restart" and lines["c4"].difference
    assert lines["late"].held == "waiting until fresh is ready"
    assert lines["late"].line == "start late (new spec); held: waiting until fresh is ready"
    assert lines["fresh"].line == "start fresh (new spec)"
    unlimited = diff(new, observed_from(old), 0.0)
    assert {line.wave for line in unlimited} == {0}


def test_a_crash_loop_is_down_even_while_one_of_its_runs_is_up() -> None:
    want, seen = changed_fleet(3)
    new = want["c00"]
    looping = replace(rolling(new), ready=True, consecutive_restarts=1)
    seen["c00"] = looping
    actions = plan(want, seen, 0.0, settings=RolloutSettings(max_unavailable=1), only={"c01"})
    assert isinstance(one(actions), Hold)
    seen["c00"] = replace(looping, consecutive_restarts=0)
    actions = plan(want, seen, 0.0, settings=RolloutSettings(max_unavailable=1), only={"c01"})
    assert isinstance(one(actions), Restart)


def test_ready_during_a_rollout_says_when_to_look_again() -> None:
    d = desired(args=["new"], rollout_timeout_seconds=30)
    seen = running(d, rollout=Rollout(d.spec_hash, 5.0, True, GOOD))
    ready_now = one(plan({"web": d}, {"web": seen}, 6.0))
    assert isinstance(ready_now, Ready) and ready_now.recheck == 35.0
    assert one(plan({"web": d}, {"web": running(d)}, 6.0)).recheck is None


@pytest.mark.parametrize(
    ("min_ready", "now", "expected"),
    [(0, 0.5, Wait), (0, 1.0, Ready), (3, 2.0, Wait), (3, 3.0, Ready)],
)
def test_a_rollouts_process_must_outlive_a_second(
    min_ready: float, now: float, expected: type
) -> None:
    d = desired(args=["new"], min_ready_seconds=min_ready)
    seen = running(d, rollout=Rollout(d.spec_hash, 0.0, True, GOOD))
    action = one(plan({"web": d}, {"web": seen}, now))
    assert isinstance(action, expected)
    if isinstance(action, Wait):
        assert action.until == max(min_ready, 1.0) and not action.backoff
    # Outside a rollout (a crash restart of a spec already good) min_ready_seconds alone.
    assert isinstance(one(plan({"web": d}, {"web": running(d)}, min_ready)), Ready)
