"""The restart policy, without processes: table-driven over DESIGN §4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.policy import (
    NoRestart,
    RestartAfter,
    RestartPolicy,
    TooManyRestarts,
    backoff_delay_seconds,
    decide_restart,
)
from reconciler.spec import CollectorConfig, ProcessManagerConfig

POLICY = RestartPolicy(
    auto_restart=True,
    max_restarts=3,
    backoff_initial_seconds=1.0,
    backoff_max_seconds=60.0,
    reset_seconds=60.0,
)


def _decide(policy: RestartPolicy = POLICY, *, done: int, ran: float = 1.0):
    return decide_restart(
        policy,
        consecutive_restarts=done,
        run_seconds=ran,
        exit_description="exited with code 1",
        jitter_key="web",
    )


@pytest.mark.parametrize(
    ("policy", "done", "ran", "expected"),
    [
        pytest.param(POLICY, 0, 1.0, RestartAfter(0.0, 1), id="first-crash-restarts-at-once"),
        pytest.param(POLICY, 2, 1.0, None, id="third-crash-backs-off"),
        pytest.param(POLICY, 3, 1.0, "give-up", id="more-than-max-gives-up"),
        pytest.param(POLICY, 3, 60.0, RestartAfter(0.0, 1), id="stable-run-resets-the-series"),
        pytest.param(POLICY, 3, 59.9, "give-up", id="almost-stable-run-does-not-reset"),
        pytest.param(
            RestartPolicy(False, 3, 1.0, 60.0, 60.0), 0, 1.0, "no-restart", id="auto-restart-off"
        ),
        pytest.param(
            RestartPolicy(True, 0, 1.0, 60.0, 60.0), 0, 1.0, "give-up", id="max-zero-never-restarts"
        ),
        pytest.param(
            RestartPolicy(True, None, 1.0, 60.0, 60.0), 500, 1.0, None, id="unlimited-keeps-going"
        ),
    ],
)
def test_decision(policy: RestartPolicy, done: int, ran: float, expected: object) -> None:
    decision = _decide(policy, done=done, ran=ran)
    if expected == "give-up":
        assert isinstance(decision, TooManyRestarts)
        assert f"max_restarts = {policy.max_restarts}" in decision.reason
    elif expected == "no-restart":
        assert isinstance(decision, NoRestart)
        assert "auto-restart is off" in decision.reason
    elif expected is None:
        assert isinstance(decision, RestartAfter)
        assert decision.attempt == done + 1 and decision.delay_seconds > 0
    else:
        assert decision == expected


@pytest.mark.parametrize(
    ("attempt", "base"),
    [
        pytest.param(1, 0.0, id="first"),
        pytest.param(2, 1.0, id="second-initial"),
        pytest.param(3, 2.0, id="doubles"),
        pytest.param(4, 4.0, id="doubles-again"),
        pytest.param(7, 32.0, id="sixth-doubling"),
        pytest.param(8, 60.0, id="capped"),
        pytest.param(50, 60.0, id="stays-capped"),
    ],
)
def test_backoff_schedule(attempt: int, base: float) -> None:
    delay = backoff_delay_seconds(POLICY, attempt=attempt, jitter_key="web")
    assert base * 0.9 <= delay <= base


@given(key=st.text(min_size=1, max_size=20), attempt=st.integers(min_value=2, max_value=100))
def test_jitter_is_at_most_ten_percent_and_reproducible(key: str, attempt: int) -> None:
    first = backoff_delay_seconds(POLICY, attempt=attempt, jitter_key=key)
    assert first == backoff_delay_seconds(POLICY, attempt=attempt, jitter_key=key)
    base = min(2.0 ** (attempt - 2), 60.0)
    assert base * 0.9 <= first <= base


def test_jitter_spreads_collectors_apart() -> None:
    delays = {backoff_delay_seconds(POLICY, attempt=20, jitter_key=f"c{i}") for i in range(100)}
    assert len(delays) > 90
    assert max(delays) - min(delays) > 3.0  # spread over most of the 6 s window


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(CollectorConfig(), POLICY.__class__(True, 3, 1.0, 60.0, 60.0), id="defaults"),
        pytest.param(
            CollectorConfig(
                auto_restart=False,
                max_restarts="unlimited",
                restart_backoff_initial_seconds=0.5,
                restart_backoff_max_seconds=5,
                restart_reset_seconds=10,
            ),
            RestartPolicy(False, None, 0.5, 5.0, 10.0),
            id="spec-overrides",
        ),
    ],
)
def test_resolve_applies_manager_defaults(config: CollectorConfig, expected: RestartPolicy) -> None:
    assert RestartPolicy.resolve(config, ProcessManagerConfig()) == expected


def test_manager_can_turn_auto_restart_off_by_default() -> None:
    policy = RestartPolicy.resolve(
        CollectorConfig(), ProcessManagerConfig(enable_auto_restart=False)
    )
    assert policy.auto_restart is False
