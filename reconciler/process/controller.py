"""The controller: wake -> ``plan()`` -> execute, level-triggered, with one timer.

Each pass reads the desired state (from whoever drives the controller: the
reconcile loop's spec snapshot, or the library façade's own calls) and the
observed state (the executor's records) of every collector that may differ,
asks the pure planner what to do, and runs each action in a task of its own.
As controller-runtime queues keys, not events: an exit, a probe result or the
end of an action marks its own collector for the next pass; a new spec
snapshot or a config reload marks all of them. So a crash among a thousand
collectors costs a pass over one, not a thousand. A plan's stops run first and
its starts wait for them (stop before start), so a collector that takes over
another's port starts once the port is free. One collector has at most one
action in flight; its next pass waits until that ends. ``Wait`` actions arm
the controller's one timer, at the earliest ``until``; giving up is recorded
at once. Exits, probe results and operator actions only wake it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from reconciler.errors import ReconcilerError
from reconciler.plan.actions import (
    FREEING_ACTIONS,
    NOTES,
    Action,
    Hold,
    Ready,
    Rollback,
    Wait,
    kind,
)
from reconciler.plan.planner import Desired, Override, plan
from reconciler.plan.rollout import RolloutSettings
from reconciler.process.clock import Cancellable
from reconciler.process.executor import Executor, Stale
from reconciler.process.records import CollectorRecord

log = logging.getLogger("reconciler.loop")

PASS_SPACING_FACTOR = 3.0
"""After a pass that took d seconds, the next starts no sooner than 3·d later: a
pass is O(collectors), and a thousand start completions would otherwise each
buy one, starving the starts themselves. Small fleets see no delay (d ~ 0.1 ms)."""

T = TypeVar("T")


class Controller:
    """Runs the one reconcile decision against an executor; see the module docstring."""

    def __init__(
        self,
        executor: Executor,
        *,
        desired: Callable[[], Mapping[str, Desired]],
        overrides: Callable[[], Mapping[str, Override]] = dict,
    ) -> None:
        self.executor = executor
        self.clock = executor.clock
        self._desired = desired
        self._overrides = overrides
        self.driven = False
        """Someone other than the library façade supplies the desired state and runs the loop."""
        self.pass_listeners: list[Callable[[float], None]] = []
        self.action_listeners: list[Callable[[str, str], None]] = []
        """Called as ``(kind, "success" | "error")`` when an action ends."""
        self.begin_listeners: list[Callable[[Action], None]] = []
        """Called when an action begins (not for a plan gone stale meanwhile)."""
        self.passes = 0
        self.last_pass_duration_seconds = 0.0
        self.busy: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._holding = False
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None
        self._all_dirty = True
        self._dirty: set[str] = set()
        self._waits: dict[str, float] = {}
        """Each waiting collector's ``Wait.wake_at``: the timer is at the earliest."""
        self.settings = RolloutSettings()
        """The ``[reconciler]`` rollout keys (``max_unavailable``, ``rollback``)."""
        self.held: dict[str, Hold] = {}
        """What waits for other collectors (``after``, waves): planned again on every pass."""
        executor.add_listener(lambda event: self.wake(event.collector_id))

    def drive(
        self,
        *,
        desired: Callable[[], Mapping[str, Desired]],
        overrides: Callable[[], Mapping[str, Override]],
    ) -> None:
        """Take the desired state from elsewhere (the reconcile loop), which then calls ``run``."""
        self._desired, self._overrides, self.driven = desired, overrides, True

    def wake(self, collector_id: str | None = None) -> None:
        """Something may differ (for one collector, or any): look again."""
        if collector_id is None:
            self._all_dirty = True
        else:
            self._dirty.add(collector_id)
        self._wake.set()

    @property
    def rollout_held(self) -> bool:
        """Waves of a push are held after a failed rollout."""
        return any(hold.cause == "held" for hold in self.held.values())

    def plan(self, only: set[str] | None = None) -> list[Action]:
        """What the next pass would do (for ``only`` these collectors), without doing it."""
        return plan(
            self._desired(),
            self.executor.observed(),
            self.clock.now(),
            overrides=self._overrides(),
            defaults=self.executor.config,
            settings=self.settings,
            only=only,
        )

    def plan_one(self, collector_id: str) -> Action | None:
        """The plan for one collector alone (the façade settles a failed start with it)."""
        if collector_id not in self._desired() or collector_id not in self.executor.records:
            return None
        actions = self.plan({collector_id})
        return actions[0] if actions else None

    # -- the loop ----------------------------------------------------------------

    async def run(self, *, on_pass: Callable[[], None] | None = None) -> None:
        """Plan and execute until ``hold()``; ``on_pass`` after each pass."""
        self._holding = False
        self._all_dirty = True
        while not self._holding:
            self._wake.clear()
            self.run_pass()
            if on_pass is not None:
                on_pass()
            await self._wake.wait()
            # Let wake-ups that arrive meanwhile share the next pass.
            await self.clock.breathe(self.last_pass_duration_seconds * PASS_SPACING_FACTOR)

    def run_pass(self) -> None:
        started = time.perf_counter()
        actions = self._plan_dirty()
        records = self.executor.records
        freeing: list[asyncio.Task[None]] = []
        became_ready = False
        for action in actions:
            collector_id = action.collector_id
            if collector_id in self.busy:
                continue  # re-planned from the newest state once its action ends
            if isinstance(action, Hold):
                self.held[collector_id] = action
                continue
            if isinstance(action, NOTES):
                record = self.executor.records.get(collector_id)
                if record is not None and not record.lock.locked():
                    self.executor.note(action)
                    became_ready = became_ready or isinstance(action, Ready)
                    if isinstance(action, Wait):
                        self._waits[collector_id] = action.wake_at
                    elif isinstance(action, Ready) and action.recheck is not None:
                        self._waits[collector_id] = action.recheck
                continue
            after = [] if isinstance(action, FREEING_ACTIONS) else list(freeing)
            task = asyncio.create_task(
                self._execute(action, _generation(records.get(collector_id)), after),
                name=f"{type(action).__name__} {collector_id}",
            )
            self.busy[collector_id] = task
            if isinstance(action, FREEING_ACTIONS):
                freeing.append(task)
        if became_ready and self.held:
            # What waits for a collector to be ready looks again.
            self._dirty.update(self.held)
            self._wake.set()
        self._arm_timer(min(self._waits.values(), default=None))
        self.last_pass_duration_seconds = time.perf_counter() - started
        self.passes += 1
        for listener in self.pass_listeners:
            listener(self.last_pass_duration_seconds)

    def _plan_dirty(self) -> list[Action]:
        """Plan the collectors marked since the last pass (all of them after a snapshot)."""
        if self._all_dirty:
            self._all_dirty, self._dirty = False, set()
            self._waits.clear()
            self.held.clear()
            return self.plan()
        # What is held waits on others: whatever moved may be what it waits for.
        dirty, self._dirty = self._dirty | self.held.keys(), set()
        for collector_id in dirty:
            self._waits.pop(collector_id, None)
            self.held.pop(collector_id, None)
        return self.plan(dirty)

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self.clock.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        now = self.clock.now()
        for collector_id, until in list(self._waits.items()):
            if until <= now:
                self.wake(collector_id)

    async def hold(self) -> None:
        """Stop planning; let the actions in flight finish."""
        self._holding = True
        self.wake()
        self._arm_timer(None)
        busy = list(self.busy.values())
        if busy:
            await asyncio.gather(*busy, return_exceptions=True)

    async def _execute(
        self, action: Action, generation: int | None, after: list[asyncio.Task[None]]
    ) -> None:
        name, collector_id = kind(action), action.collector_id
        counted = "restart" if isinstance(action, Rollback) else name
        result: str | None = "success"
        try:
            if after:
                # Stop before start: what this plan frees is free before it starts anything.
                await asyncio.wait(after)
            await self.executor.execute(action, generation=generation, on_begin=self._began)
        except Stale:
            result = None
            log.debug("%s: %s planned from an older state; planning again", collector_id, name)
        except ReconcilerError as exc:
            result = "error"
            log.error("%s: %s failed: %s: %s", collector_id, name, exc.code, exc.message)
        except Exception:
            result = "error"
            log.exception("%s: %s failed", collector_id, name)
        finally:
            if self.busy.get(collector_id) is asyncio.current_task():
                del self.busy[collector_id]
            if result is not None:
                for listener in self.action_listeners:
                    listener(counted, result)
            self.wake(collector_id)

    def _began(self, action: Action) -> None:
        for listener in self.begin_listeners:
            listener(action)

    async def exclusive(self, collector_id: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` as the collector's one action in flight (an operator's restart)."""
        while (busy := self.busy.get(collector_id)) is not None:
            await asyncio.wait({busy})
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                done.set_result(await work())
            except BaseException as exc:
                done.set_exception(exc)
            finally:
                self.busy.pop(collector_id, None)
                self.wake(collector_id)

        self.busy[collector_id] = asyncio.create_task(run())
        return await done


def _generation(record: CollectorRecord | None) -> int | None:
    return record.generation if record is not None else None
