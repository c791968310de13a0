"""The controller (plan -> execute) against FakeDriver and a manual clock: no process, no real time.

What used to be tested only end to end with real processes and real delays —
crash restarts, backoff, giving up, probe restarts, spec changes and deletes
during backoff, operator restarts, overrides — runs here in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.errors import SpawnFailed
from reconciler.plan import Desired, Override
from reconciler.plan.policy import RestartPolicy, backoff_delay_seconds
from reconciler.process import CollectorProcessManager, FakeDriver, ManagerEvent, ManualClock
from reconciler.process.clock import settle
from reconciler.spec import CollectorConfig, CollectorSpec, ProcessManagerConfig
from reconciler.spec import process_hash as identity_of
from reconciler.spec import spec_hash as hash_of
from reconciler.state import CollectorState as S
from reconciler.state import DesiredState

pytestmark = pytest.mark.timeout(5)

CONFIG = ProcessManagerConfig(
    restart_backoff_initial_seconds=1.0,
    restart_backoff_max_seconds=60.0,
    restart_reset_seconds=60.0,
    default_graceful_timeout_seconds=10.0,
    default_force_timeout_seconds=5.0,
)


def desired(**fields: Any) -> Desired:
    spec = CollectorSpec.model_validate({"type": "web", "binary_path": "/bin/web", **fields})
    return Desired(spec, hash_of(spec), identity_of(spec))


class Loop:
    """The controller driven by a dict of desired specs, as the reconcile loop drives it."""

    def __init__(self, config: ProcessManagerConfig = CONFIG) -> None:
        self.clock = ManualClock()
        self.driver = FakeDriver(clock=self.clock)
        self.manager = CollectorProcessManager(config, driver=self.driver)
        self.controller = self.manager.controller
        self.desired: dict[str, Desired] = {}
        self.overrides: dict[str, Override] = {}
        self.controller.drive(desired=lambda: self.desired, overrides=lambda: self.overrides)
        self.events: list[ManagerEvent] = []
        self.manager.add_listener(self.events.append)
        self.start_times: dict[str, list[float]] = {}
        self.manager.add_listener(self._note_start)
        self._task: asyncio.Task[None] | None = None

    def _note_start(self, event: ManagerEvent) -> None:
        if event.kind == "started":
            self.start_times.setdefault(event.collector_id, []).append(self.clock.now())

    async def start(self) -> None:
        self._task = asyncio.create_task(self.controller.run())
        await settle()

    async def close(self) -> None:
        await self.controller.hold()
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.manager.shutdown_all()

    async def put(self, collector_id: str, d: Desired) -> None:
        self.desired[collector_id] = d
        self.controller.wake()
        await settle()

    async def remove(self, collector_id: str) -> None:
        del self.desired[collector_id]
        self.controller.wake()
        await settle()

    async def crash(self, collector_id: str, code: int = 1) -> None:
        self.driver.exit(collector_id, code)
        await settle()

    def state(self, collector_id: str) -> S:
        return self.manager.status(collector_id).state

    def kinds(self, collector_id: str) -> list[str]:
        return [e.kind for e in self.events if e.collector_id == collector_id]


@pytest.fixture
async def loop() -> AsyncIterator[Loop]:
    harness = Loop()
    await harness.start()
    try:
        yield harness
    finally:
        await harness.close()


def expected_delays(count: int, **spec: Any) -> list[float]:
    policy = RestartPolicy.resolve(desired(**spec).spec, CONFIG)
    return [backoff_delay_seconds(policy, attempt=n, jitter_key="web") for n in range(1, count + 1)]


async def test_a_new_spec_starts_and_a_converged_one_does_nothing(loop: Loop) -> None:
    await loop.put("web", desired())
    assert loop.state("web") == S.RUNNING and loop.driver.spawned["web"] == 1
    passes = loop.controller.passes
    loop.controller.wake()
    await settle()
    assert loop.controller.passes > passes and loop.driver.spawned["web"] == 1


async def test_crash_restarts_at_once_then_backs_off_1_2_4_then_fails(loop: Loop) -> None:
    await loop.put("web", desired(max_restarts=3))
    for attempt, delay in enumerate(expected_delays(3), start=1):
        crashed_at = loop.clock.now()
        await loop.crash("web")
        if delay > 0:
            assert loop.state("web") == S.BACKOFF
            assert 0 < loop.manager.status("web").backoff_seconds <= delay + 1e-9
            await loop.clock.advance(delay * 0.99)
            assert loop.state("web") == S.BACKOFF, "restarted before its backoff ended"
            await loop.clock.advance(delay * 0.01 + 1e-6)
        assert loop.state("web") == S.RUNNING
        assert loop.start_times["web"][-1] == pytest.approx(crashed_at + delay, abs=1e-3)
        assert loop.manager.status("web").consecutive_restarts == attempt
    gaps = [b - a for a, b in itertools.pairwise(loop.start_times["web"])]
    assert [round(g) for g in gaps] == [0, 1, 2]
    assert 0.9 <= gaps[1] <= 1.0 and 1.8 <= gaps[2] <= 2.0, "at most 10 % jitter, never more"
    await loop.crash("web")
    status = loop.manager.status("web")
    assert status.state == S.FAILED and status.restart_count == 3
    assert "gave up after 3 consecutive restarts" in (status.last_error or "")
    await loop.clock.advance(3600)
    assert loop.state("web") == S.FAILED and loop.driver.spawned["web"] == 4, "failed stays failed"


async def test_backoff_doubles_to_its_cap_and_gives_up_after_max_restarts() -> None:
    """Moved from the integration suite, where it waited 2.4 s of real time.

    Initial 0.2 s, max 1 s, max_restarts 5: restarts at +0, +0.2, +0.4, +0.8, +1.0
    after each crash (less at most 10 % jitter), four of them through backoff.
    """
    config = CONFIG.model_copy(
        update={"restart_backoff_initial_seconds": 0.2, "restart_backoff_max_seconds": 1.0}
    )
    loop = Loop(config)
    await loop.start()
    try:
        await loop.put("web", desired(max_restarts=5))
        delays = []
        for _ in range(6):
            crashed_at = loop.clock.now()
            await loop.crash("web")
            await loop.clock.advance(1.0)
            restarted_at = loop.start_times["web"][-1]
            if restarted_at >= crashed_at:
                delays.append(restarted_at - crashed_at)
        assert len(delays) == 5, delays
        for delay, base in zip(delays, [0.0, 0.2, 0.4, 0.8, 1.0], strict=True):
            assert base * 0.9 - 1e-9 <= delay <= base + 1e-9, delays
        assert loop.kinds("web").count("backoff") == 4
        status = loop.manager.status("web")
        assert status.state == S.FAILED and status.restart_count == 5
        assert "gave up after 5 consecutive restarts" in (status.last_error or "")
    finally:
        await loop.close()


async def test_a_stable_run_ends_the_series(loop: Loop) -> None:
    await loop.put("web", desired())
    await loop.crash("web")
    await loop.crash("web")
    assert loop.state("web") == S.BACKOFF
    await loop.clock.advance(1.0)
    assert loop.manager.status("web").consecutive_restarts == 2
    await loop.clock.advance(CONFIG.restart_reset_seconds)  # a run as long as the reset time
    await loop.crash("web")
    status = loop.manager.status("web")
    assert status.state == S.RUNNING and status.consecutive_restarts == 1, "restarted at once"


@pytest.mark.parametrize(
    ("spec", "code", "state"),
    [
        pytest.param({"auto_restart": False}, 1, S.FAILED, id="crash-without-auto-restart"),
        pytest.param({"auto_restart": False}, 0, S.STOPPED, id="clean-exit-without-auto-restart"),
        pytest.param({"max_restarts": 0}, 1, S.FAILED, id="max-restarts-0"),
    ],
)
async def test_exits_that_are_not_restarted(loop: Loop, spec, code: int, state: S) -> None:
    await loop.put("web", desired(**spec))
    await loop.crash("web", code)
    assert loop.state("web") == state
    await loop.clock.advance(120)
    assert loop.state("web") == state and loop.driver.spawned["web"] == 1


async def test_unlimited_never_gives_up(loop: Loop) -> None:
    await loop.put("web", desired(max_restarts="unlimited"))
    for _ in range(12):
        await loop.crash("web")
        await loop.clock.advance(60)
        assert loop.state("web") == S.RUNNING
    assert loop.manager.status("web").restart_count == 12


async def test_probe_at_its_threshold_restarts(loop: Loop) -> None:
    check = {"exec": ["probe"], "interval_seconds": 5, "failure_threshold": 2}
    await loop.put("web", desired(health_check=check))
    loop.driver.probe_results("web", True, False, False)
    await loop.clock.advance(10)
    assert loop.manager.status("web").probe_failures == 1
    assert loop.driver.spawned["web"] == 1
    await loop.clock.advance(5)
    status = loop.manager.status("web")
    assert loop.driver.spawned["web"] == 2 and status.state == S.RUNNING
    assert status.restart_count == 1 and (status.last_error or "").startswith("unhealthy")
    assert "unhealthy" in loop.kinds("web")
    assert loop.driver.effects.count("signal web SIGTERM") == 1, "stopped gracefully"


async def test_a_health_check_added_in_place_starts_probing(loop: Loop) -> None:
    await loop.put("web", desired())
    check = {"exec": ["probe"], "interval_seconds": 5, "failure_threshold": 1}
    await loop.put("web", desired(health_check=check))
    assert loop.driver.spawned["web"] == 1, "a health check is applied in place"
    loop.driver.probe_results("web", False)
    await loop.clock.advance(5)
    assert "probe web" in loop.driver.effects
    assert loop.driver.spawned["web"] == 2, "the new probe failed at its threshold: restarted"


async def test_probe_threshold_without_auto_restart_only_reports(loop: Loop) -> None:
    check = {"exec": ["probe"], "interval_seconds": 1, "failure_threshold": 1}
    await loop.put("web", desired(health_check=check, auto_restart=False))
    loop.driver.probe_results("web", False)
    await loop.clock.advance(1)
    status = loop.manager.status("web")
    assert status.health == "unhealthy" and status.state == S.RUNNING
    assert loop.driver.spawned["web"] == 1


async def test_a_fix_during_backoff_starts_at_once(loop: Loop) -> None:
    await loop.put("web", desired())
    await loop.crash("web")
    await loop.crash("web")
    assert loop.state("web") == S.BACKOFF
    await loop.put("web", desired(args=["--fixed"]))
    status = loop.manager.status("web")
    assert status.state == S.RUNNING and status.consecutive_restarts == 0


async def test_a_policy_change_during_backoff_applies_in_place(loop: Loop) -> None:
    await loop.put("web", desired())
    await loop.crash("web")
    await loop.crash("web")
    spawned = loop.driver.spawned["web"]
    await loop.put("web", desired(max_restarts=1))
    assert loop.state("web") == S.FAILED, "the new max_restarts is already exceeded"
    assert loop.driver.spawned["web"] == spawned


async def test_delete_during_backoff_forgets_it(loop: Loop) -> None:
    await loop.put("web", desired())
    await loop.crash("web")
    await loop.crash("web")
    assert loop.state("web") == S.BACKOFF
    await loop.remove("web")
    assert loop.manager.collector_ids() == []
    await loop.clock.advance(60)
    assert loop.driver.spawned["web"] == 2, "no restart after the file is gone"


async def test_operator_restart_brings_back_a_failed_collector(loop: Loop) -> None:
    await loop.put("web", desired(max_restarts=0))
    await loop.crash("web")
    assert loop.state("web") == S.FAILED
    await loop.manager.restart_collector("web", reason="restarted by operator")
    await settle()
    status = loop.manager.status("web")
    assert status.state == S.RUNNING and status.consecutive_restarts == 0


async def test_operator_restart_that_fails_again_is_failed_at_once(loop: Loop) -> None:
    await loop.put("web", desired(max_restarts=0))
    await loop.crash("web")
    loop.driver.fail_spawns("web")
    with pytest.raises(SpawnFailed):
        await loop.manager.restart_collector("web")
    assert loop.state("web") == S.FAILED


async def test_a_failed_first_start_is_retried_under_the_policy(loop: Loop) -> None:
    loop.driver.fail_spawns("web", 2)
    await loop.put("web", desired())
    assert loop.state("web") == S.BACKOFF and loop.driver.spawned.get("web") is None
    await loop.clock.advance(1.0)
    assert loop.state("web") == S.RUNNING and loop.manager.status("web").restart_count == 2


@pytest.mark.parametrize(
    ("spec_state", "override", "state"),
    [
        pytest.param("running", DesiredState.PAUSED, S.PAUSED, id="pause-override"),
        pytest.param("paused", DesiredState.RUNNING, S.RUNNING, id="resume-override"),
        pytest.param("paused", None, S.PAUSED, id="spec-paused"),
    ],
)
async def test_overrides(loop: Loop, spec_state: str, override, state: S) -> None:
    d = desired(state=spec_state)
    if override is not None:
        loop.overrides["web"] = Override(override, d.spec_hash, "by operator")
    await loop.put("web", d)
    assert loop.state("web") == state
    await loop.put("web", desired(state=spec_state, args=["x"]))
    after_edit = S.RUNNING if spec_state == "running" else S.PAUSED
    assert loop.state("web") == after_edit, "a spec change ends the override"


async def test_graceful_stop_escalates_to_kill_after_its_timeout(loop: Loop) -> None:
    await loop.put("web", desired(graceful_timeout_seconds=3))
    loop.driver.ignore_stop_signal("web")
    await loop.put("web", desired(graceful_timeout_seconds=3, state="stopped"))
    assert loop.state("web") == S.STOPPING
    await loop.clock.advance(2.9)
    assert loop.state("web") == S.STOPPING
    await loop.clock.advance(0.2)
    assert loop.state("web") == S.STOPPED
    assert loop.driver.effects[-2:] == ["signal web SIGTERM", "kill web"]


async def test_stops_of_a_pass_come_before_its_starts(loop: Loop) -> None:
    await loop.put("a", desired(graceful_timeout_seconds=3))
    loop.driver.ignore_stop_signal("a")
    del loop.desired["a"]
    await loop.put("b", desired())
    assert loop.driver.spawned.get("b") is None, "b waits while a still stops"
    await loop.clock.advance(3)
    assert loop.driver.spawned["b"] == 1 and loop.manager.collector_ids() == ["b"]
    assert loop.driver.effects.index("kill a") < loop.driver.effects.index("spawn b")


async def test_an_embedder_gets_auto_restart_from_the_facade_alone() -> None:
    """The README's FakeDriver example, step by step: the library API without a loop."""
    clock = ManualClock()
    driver = FakeDriver(clock=clock)
    manager = CollectorProcessManager(ProcessManagerConfig(), driver=driver)
    try:
        await manager.start_collector("web", "web", CollectorConfig(binary_path="/bin/web"))
        driver.exit("web", 1)
        await settle()
        assert manager.status("web").state == S.RUNNING and driver.spawned["web"] == 2
        driver.exit("web", 1)
        await settle()
        assert manager.status("web").state == S.BACKOFF
        await clock.advance(1.0)
        assert manager.status("web").state == S.RUNNING and driver.spawned["web"] == 3
    finally:
        await manager.shutdown_all()
