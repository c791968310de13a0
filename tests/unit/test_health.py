"""Health per DESIGN §4, as a table: no process, no probe run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.plan.health import HealthFacts, health
from reconciler.state import CollectorState as S
from reconciler.state import DesiredState as D
from reconciler.state import HealthStatus as H

RUNNING = HealthFacts(
    state=S.RUNNING,
    desired=D.RUNNING,
    has_process=True,
    process_exited=False,
    awaiting_restart=False,
    failure_threshold=None,
    probe_failures=0,
    probe_passed=None,
)
PROBED = replace(RUNNING, failure_threshold=3, probe_passed=True)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(RUNNING, H.HEALTHY, id="running-as-desired"),
        pytest.param(replace(RUNNING, state=S.FAILED, has_process=False), H.UNHEALTHY, id="failed"),
        pytest.param(
            replace(RUNNING, state=S.BACKOFF, has_process=False), H.DEGRADED, id="backoff"
        ),
        pytest.param(replace(RUNNING, state=S.STARTING), H.DEGRADED, id="starting"),
        pytest.param(replace(RUNNING, desired=D.PAUSED), H.DEGRADED, id="not-yet-paused"),
        pytest.param(replace(RUNNING, process_exited=True), H.DEGRADED, id="exit-not-yet-handled"),
        pytest.param(
            replace(RUNNING, state=S.STOPPED, has_process=False, awaiting_restart=True),
            H.DEGRADED,
            id="crashed-awaiting-restart",
        ),
        pytest.param(replace(PROBED, probe_passed=None), H.UNKNOWN, id="probe-not-run-yet"),
        pytest.param(PROBED, H.HEALTHY, id="probe-passes"),
        pytest.param(replace(PROBED, probe_failures=2), H.DEGRADED, id="below-threshold"),
        pytest.param(replace(PROBED, probe_failures=3), H.UNHEALTHY, id="at-threshold"),
        pytest.param(
            replace(RUNNING, state=S.STOPPED, desired=D.STOPPED, has_process=False),
            H.HEALTHY,
            id="stopped-as-desired",
        ),
    ],
)
def test_health(facts: HealthFacts, expected: H) -> None:
    assert health(facts) == expected
