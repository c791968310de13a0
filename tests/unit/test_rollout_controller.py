"""Readiness, ``after``, waves and rollback through the controller, on FakeDriver, manual clock.

The planner's tables (test_rollout_plan.py) say what each case decides; here
the whole loop carries it out: probes run, timers fire, the executor records
readiness, rollouts and rejections, and the next pass sees them.
"""

from __future__ import annotations

# ruff: noqa: F811 - `loop` is the fixture imported below, taken as an argument
from typing import Any

import pytest

from reconciler.plan.rollout import RolloutSettings
from reconciler.process.clock import settle
from tests.unit.test_controller import Loop, desired, loop  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(5)

PROBE = {"tcp": "127.0.0.1:9", "interval_seconds": 1}


def record(loop: Loop, collector_id: str) -> Any:
    return loop.manager.executor.records[collector_id]


async def test_ready_once_the_ready_check_passes_and_min_ready_seconds_ran(loop: Loop) -> None:
    loop.driver.ready_results("web", False, False)
    await loop.put("web", desired(ready_check=PROBE, min_ready_seconds=5))
    assert not record(loop, "web").ready
    await loop.clock.advance(2.0)  # the third probe passes, at t = 2
    assert record(loop, "web").ready_probe_run is not None and not record(loop, "web").ready
    await loop.clock.advance(2.9)
    assert not record(loop, "web").ready, "ready before min_ready_seconds ran"
    await loop.clock.advance(0.2)
    assert record(loop, "web").ready
    assert "ready" in loop.kinds("web")
    assert loop.driver.effects.count("ready_check web") == 3, "no probe once it passed"


async def test_without_probe_ready_after_a_second_and_a_crash_restart_at_once(loop: Loop) -> None:
    await loop.put("web", desired(max_restarts=5))
    # A rollout's process must outlive a second: one that exits at once is never ready.
    assert not record(loop, "web").ready
    await loop.clock.advance(0.99)
    assert not record(loop, "web").ready
    await loop.clock.advance(0.01)
    assert record(loop, "web").ready and loop.kinds("web") == ["started", "ready"]
    # The rollout of a new spec stays open through rollout_timeout_seconds.
    await loop.clock.advance(118.0)
    assert record(loop, "web").rollout is not None and record(loop, "web").good is None
    await loop.clock.advance(1.0)
    assert record(loop, "web").rollout is None and loop.kinds("web")[-1] == "rollout_done"
    assert record(loop, "web").good is not None
    await loop.crash("web")
    assert record(loop, "web").ready and loop.kinds("web")[-1] == "started", "ready and quiet"


async def test_a_crash_ends_readiness_and_the_new_process_probes_again(loop: Loop) -> None:
    await loop.put("web", desired(ready_check=PROBE, max_restarts=5))
    await loop.clock.advance(1.0)
    assert record(loop, "web").ready
    loop.driver.ready_results("web", False)
    await loop.crash("web")
    assert loop.driver.spawned["web"] == 2 and not record(loop, "web").ready
    await loop.clock.advance(1.0)
    assert record(loop, "web").ready


async def test_after_starts_the_dependent_once_its_dependency_is_ready(loop: Loop) -> None:
    loop.driver.ready_results("a", False, False, False)
    loop.desired["a"] = desired(ready_check=PROBE)
    loop.desired["b"] = desired(after=["a"])
    loop.controller.wake()
    await settle()
    assert loop.driver.spawned["a"] == 1 and loop.driver.spawned.get("b", 0) == 0
    assert loop.controller.held["b"].reason == "waiting until a is ready"
    await loop.clock.advance(2.0)
    assert loop.driver.spawned.get("b", 0) == 0
    await loop.clock.advance(1.0)
    assert loop.driver.spawned["b"] == 1 and "b" not in loop.controller.held
    spawns = [e for e in loop.driver.effects if e.startswith("spawn")]
    assert spawns == ["spawn a", "spawn b"]


async def test_removing_both_stops_the_dependent_first(loop: Loop) -> None:
    await loop.put("a", desired())
    await loop.put("b", desired(after=["a"]))
    await loop.clock.advance(1.0)  # a is ready: b starts
    assert loop.driver.alive("b")
    loop.driver.effects.clear()
    loop.desired.clear()
    loop.controller.wake()
    await settle()
    await loop.clock.advance(1.0)
    stops = [e for e in loop.driver.effects if e.startswith("signal")]
    assert [s.split()[1] for s in stops] == ["b", "a"], loop.driver.effects
    assert loop.manager.collector_ids() == []


async def test_a_rollout_not_ready_in_time_rolls_back_and_rejects_the_content(loop: Loop) -> None:
    good = desired(args=["good"], ready_check=PROBE)
    await loop.put("web", good)
    await loop.clock.advance(1.0)
    assert record(loop, "web").ready
    bad = desired(args=["bad"], ready_check=PROBE, rollout_timeout_seconds=10, rollback=True)
    loop.driver.ready_results("web", then=False)
    await loop.put("web", bad)
    assert loop.driver.spawned["web"] == 2 and record(loop, "web").rollout is not None
    await loop.clock.advance(9.5)
    assert record(loop, "web").applied.spec_hash == bad.spec_hash, "rolled back too early"
    await loop.clock.advance(0.6)
    rec = record(loop, "web")
    assert rec.applied.spec_hash == good.spec_hash, "not rolled back at the deadline"
    assert rec.rejected is not None and rec.rejected.spec_hash == bad.spec_hash
    assert "not ready within rollout_timeout_seconds = 10" in rec.rejected.reason
    assert "rollback" in loop.kinds("web") and loop.driver.spawned["web"] == 3
    loop.driver.ready_results("web", then=True)
    await loop.clock.advance(1.0)
    assert record(loop, "web").ready
    # Not tried again while the file says the same.
    await loop.clock.advance(60)
    loop.controller.wake()
    await settle()
    assert loop.driver.spawned["web"] == 3
    # A fix is a new rollout.
    await loop.put("web", desired(args=["fixed"], ready_check=PROBE))
    assert loop.driver.spawned["web"] == 4 and record(loop, "web").rejected is None
    await loop.clock.advance(1.0)
    assert record(loop, "web").ready and record(loop, "web").rollout is not None
    await loop.clock.advance(120.0)
    assert record(loop, "web").rollout is None and "rollout_done" in loop.kinds("web")


async def test_bad_args_that_exit_at_once_roll_back_when_it_gives_up(loop: Loop) -> None:
    """The defaults: no probe, min_ready_seconds 0. Ready for an instant does not make a
    rollout: it crash-loops into failed before its deadline, and goes back."""
    good = desired(args=["good"])
    await loop.put("web", good)
    await loop.clock.advance(120.0)
    bad = desired(args=["bad"], max_restarts=2, rollback=True)
    await loop.put("web", bad)
    assert record(loop, "web").rollout is not None and not record(loop, "web").ready
    assert not loop.manager.executor.records["web"].rejected
    await loop.crash("web", 2)  # restarted at once (attempt 1)
    await loop.crash("web", 2)  # backoff, then attempt 2
    await loop.clock.advance(1.0)
    await loop.crash("web", 2)  # gave up: failed, and the rollout with it
    rec = record(loop, "web")
    assert rec.applied.spec_hash == good.spec_hash, "back to the last ready spec"
    assert rec.rejected is not None and "failed before it was ready" in rec.rejected.reason
    assert "exited with code 2; gave up after 2 consecutive restarts" in rec.rejected.reason
    assert loop.manager.status("web").state.value == "running"
    assert loop.kinds("web").count("rollback") == 1


async def test_a_push_during_an_open_rollout_rolls_back_to_the_one_ready_then(loop: Loop) -> None:
    await loop.put("web", desired(args=["v1"]))
    await loop.put("web", desired(args=["v2"]))
    await loop.clock.advance(1.0)  # v2 ready; its rollout still open
    v2 = desired(args=["v2"])
    bad = desired(args=["v3"], ready_check=PROBE, rollout_timeout_seconds=5, rollback=True)
    loop.driver.ready_results("web", then=False)
    await loop.put("web", bad)
    await loop.clock.advance(5.0)
    rec = record(loop, "web")
    assert rec.applied.spec_hash == v2.spec_hash, "v2 was ready when v3 came: it is the target"


async def test_waves_restart_one_at_a_time_and_a_failure_holds_the_rest(loop: Loop) -> None:
    loop.controller.settings = RolloutSettings(max_unavailable=1)
    ids = ["c0", "c1", "c2", "c3"]
    for cid in ids:
        loop.desired[cid] = desired(args=["old"], ready_check=PROBE)
    loop.controller.wake()
    await settle()
    await loop.clock.advance(1.0)
    assert all(record(loop, cid).ready for cid in ids)
    for cid in ids:
        loop.driver.ready_results(cid, False)  # each new process is ready one probe later
        loop.desired[cid] = desired(args=["new"], ready_check=PROBE, rollout_timeout_seconds=5)
    loop.driver.ready_results("c1", then=False)  # c1's new spec never gets ready
    loop.controller.wake()
    await settle()
    assert [loop.driver.spawned[cid] for cid in ids] == [2, 1, 1, 1]
    assert loop.controller.held["c3"].cause == "wave"
    await loop.clock.advance(1.0)
    assert [loop.driver.spawned[cid] for cid in ids] == [2, 2, 1, 1], "the next wave after c0"
    await loop.clock.advance(5.0)
    # c1 failed its rollout (no rollback): the rest of the push is held.
    assert "rollout_failed" in loop.kinds("c1")
    assert loop.controller.rollout_held
    assert loop.controller.held["c2"].reason == "rollout held: c1 failed"
    await loop.clock.advance(30.0)
    assert [loop.driver.spawned[cid] for cid in ids] == [2, 2, 1, 1]
    # Reverting c1's file ends the hold.
    loop.driver.ready_results("c1", then=True)
    loop.desired["c1"] = desired(args=["old"], ready_check=PROBE)
    loop.controller.wake()
    await settle()
    await loop.clock.advance(3.0)
    assert not loop.controller.rollout_held
    assert [loop.driver.spawned[cid] for cid in ids] == [2, 3, 2, 2]
