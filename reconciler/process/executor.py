"""The executor: carries out the planner's actions on a ``ProcessDriver``, and records what happens.

It keeps one record per collector (``records.CollectorRecord``), runs each
action under that collector's lock (so operations on one collector are
serialised while different collectors proceed concurrently), sequences a stop
(stop signal, SIGCONT if paused, wait, SIGKILL the tree, wait, else
``TERMINATE_FAILED``; a forced stop escalates a graceful one under way), runs
health probes, and turns an exit nobody asked for into ``Observed.exit`` for
the next plan. It decides nothing: whether a crash is restarted, when, and
when to give up is ``reconciler.plan``'s. Used by the controller and the
library façade (``CollectorProcessManager``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from reconciler.errors import (
    AlreadyRunning,
    InvalidState,
    PlatformNotSupported,
    ProcessNotFound,
    SpawnFailed,
    TerminateFailed,
)
from reconciler.plan.actions import (
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
from reconciler.plan.planner import Desired, Exit
from reconciler.plan.rollout import Rejected, Rollout
from reconciler.process.driver import Launch, ProcessDriver, Run, RunIdentity
from reconciler.process.events import ManagerEvent, describe_exit
from reconciler.process.probes import ProbeLoops
from reconciler.process.records import Applied, CollectorRecord, ObservedMap
from reconciler.spec.models import (
    CollectorConfig,
    CollectorSpec,
    HealthCheck,
    ProcessManagerConfig,
    ReadyCheck,
)
from reconciler.state import CollectorState, CollectorStatus, DesiredState

log = logging.getLogger("reconciler.process.manager")


class Stale(Exception):
    """The record changed since the action was planned: plan again instead."""


class Executor(ProbeLoops):
    """Records and effects of every collector; see the module docstring."""

    def __init__(
        self,
        driver: ProcessDriver,
        config: ProcessManagerConfig,
        *,
        configure: Callable[[str, CollectorSpec], CollectorConfig] | None = None,
    ) -> None:
        self.driver = driver
        self.clock = driver.clock
        self.config = config
        self.configure = configure or (lambda _id, spec: spec)  # a spec is a CollectorConfig
        """Spec -> the config a process is started with (the loop resolves relative paths)."""
        self.records: dict[str, CollectorRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Callable[[ManagerEvent], None]] = []
        self._tasks: set[asyncio.Task[object]] = set()
        self.closing = False

    # -- events and tasks -------------------------------------------------------

    def add_listener(self, listener: Callable[[ManagerEvent], None]) -> None:
        self._listeners.append(listener)

    def emit(
        self,
        record: CollectorRecord,
        kind: str,
        message: str,
        *,
        automatic: bool = False,
        forced: bool = False,
    ) -> None:
        record.changed()
        event = ManagerEvent(
            record.collector_id, kind, message, time.time(), automatic=automatic, forced=forced
        )
        log.info("%s: %s", record.collector_id, message)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def spawn_task(self, coro: Coroutine[object, object, object], *, name: str) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- records ----------------------------------------------------------------

    def get(self, collector_id: str) -> CollectorRecord:
        try:
            return self.records[collector_id]
        except KeyError:
            raise ProcessNotFound(f"no collector {collector_id!r}") from None

    def lock_for(self, collector_id: str) -> asyncio.Lock:
        return self._locks.setdefault(collector_id, asyncio.Lock())

    def record_for(
        self, collector_id: str, collector_type: str, config: CollectorConfig
    ) -> CollectorRecord:
        """The collector's record, created on first use (lock held by the caller)."""
        record = self.records.get(collector_id)
        if record is None:
            record = CollectorRecord(
                collector_id, collector_type, config, lock=self.lock_for(collector_id)
            )
            self.records[collector_id] = record
        return record

    def observed(self) -> ObservedMap:
        """What the planner reads: made lazily, so a pass over a few collectors costs a few."""
        return ObservedMap(self.records)

    def status(self, collector_id: str) -> CollectorStatus:
        return self.get(collector_id).status(self.clock.now())

    def runs(self) -> dict[str, Run]:
        return {cid: r.run for cid, r in self.records.items() if r.run is not None}

    def run_identity(self, collector_id: str) -> RunIdentity | None:
        run = self.get(collector_id).run
        return run.identity() if run is not None else None

    # -- carrying out a plan ----------------------------------------------------

    async def execute(
        self,
        action: Action,
        *,
        generation: int | None,
        on_begin: Callable[[Action], None] | None = None,
    ) -> None:
        """Carry out one planned action; ``Stale`` if the record moved on since planning.

        ``generation`` is the record's generation the plan was made from
        (``None``: the collector had no record then).
        """
        collector_id = action.collector_id
        lock = self.lock_for(collector_id)
        async with lock:
            record = self.records.get(collector_id)
            if (record.generation if record is not None else None) != generation:
                raise Stale(collector_id)
            if self.closing:
                raise InvalidState("the process manager is shutting down")
            if on_begin is not None:
                on_begin(action)
            match action:
                case Start() | Restart():
                    await self._start_action(action, record)
                case Update():
                    old = self._need(record).config
                    self._reprobe_if_changed(self._apply(action), old.health_check, old.ready_check)
                case Stop():
                    await self._stop_action(action, record)
                case Pause() | Resume():
                    await self.job_control_locked(
                        self._need(record), pause=isinstance(action, Pause)
                    )
                case Forget():
                    if record is not None:
                        self.forget_locked(record)
                case Rollback():
                    await self._rollback(action, self._need(record))
                case Wait() | GiveUp() | Ready() | RolloutFailed() | RolloutDone():
                    self.note(action)

    def note(self, action: Wait | GiveUp | Ready | RolloutFailed | RolloutDone) -> None:
        """Record a decision that needs no effect: a backoff wait, giving up, readiness."""
        record = self.records.get(action.collector_id)
        if record is None:
            return
        if isinstance(action, Ready | RolloutFailed | RolloutDone):
            self._note_rollout(record, action)
            return
        if record.run is not None:
            return
        if isinstance(action, Wait):
            if not action.backoff:
                return
            if record.state == CollectorState.BACKOFF and record.backoff_until == action.until:
                return
            record.state = CollectorState.BACKOFF
            record.backoff_until = action.until
            self.emit(record, "backoff", action.reason)
            return
        record.state = CollectorState.STOPPED if action.clean else CollectorState.FAILED
        record.exit = None
        record.gave_up = True
        record.backoff_until = None
        if action.exhausted:
            record.error(action.reason, record.last_error_code)
        self.emit(record, "stopped" if action.clean else "failed", action.reason)

    def _note_rollout(
        self, record: CollectorRecord, action: Ready | RolloutFailed | RolloutDone
    ) -> None:
        run, applied, rollout = record.run, record.applied, record.rollout
        mine = rollout is not None and not rollout.failed and rollout.spec_hash == action.spec_hash
        if isinstance(action, RolloutFailed | RolloutDone):
            if not mine or rollout is None:
                return
            if isinstance(action, RolloutFailed):
                record.rollout = replace(rollout, failed=True)
                self.emit(record, "rollout_failed", action.reason)
                return
            record.rollout = None
            if applied is not None and applied.spec_hash == action.spec_hash:
                record.good = _desired(applied)
            self.emit(record, "rollout_done", f"rollout done: {action.reason}")
            return
        if run is None or applied is None or applied.spec_hash != action.spec_hash:
            return
        record.ready_run = run
        if not mine:
            # Outside a rollout, ready is proof enough; a rollout's content is the last
            # ready spec only once the rollout is done.
            record.good = _desired(applied)
        if action.announce:
            self.emit(record, "ready", f"ready (pid {run.pid}): {action.reason}")
        else:
            record.changed()

    def _begin_rollout(self, action: Start | Restart, record: CollectorRecord | None) -> None:
        """A start of content never seen ready: a rollout until it is (set before any await,
        so the next pass already counts it against ``max_unavailable``)."""
        open_ = record.rollout if record is not None else None
        if not action.rollout:
            if open_ is not None and open_.spec_hash != action.spec_hash and record is not None:
                record.rollout = None  # other content (a revert) ends it
            return
        record = self.record_for(
            action.collector_id, action.spec.type, self.configure(action.collector_id, action.spec)
        )
        applied = record.applied
        if open_ is not None and record.ready and applied is not None:
            if applied.spec_hash == open_.spec_hash and not open_.failed:
                record.good = _desired(applied)  # ready when the next push came: it was good
        if record.rejected is not None and record.rejected.spec_hash != action.spec_hash:
            record.rejected = None  # other content rolls out: that rejection is over
        unavailable = isinstance(action, Restart) and record.run is not None
        record.rollout = Rollout(action.spec_hash, self.clock.now(), unavailable, record.good)

    async def _rollback(self, action: Rollback, record: CollectorRecord) -> None:
        record.rejected = Rejected(action.rejected_hash, action.reason, time.time())
        record.rollout = None
        record.good = Desired(action.spec, action.spec_hash, action.process_hash)
        self.emit(record, "rollback", action.reason)
        if record.run is not None:
            await self.stop_locked(record, graceful=True, timeout=None)
        record = self._apply(action)
        record.restart_count += 1
        record.consecutive_restarts = 0
        await self.spawn_locked(record, reason="rolled back to the last ready spec")

    async def _start_action(self, action: Start | Restart, record: CollectorRecord | None) -> None:
        self._begin_rollout(action, record)
        if isinstance(action, Restart) and record is not None:
            await self.stop_locked(record, graceful=True, timeout=None)
        record = self._apply(action)
        if isinstance(action, Restart):
            record.restart_count += 1
            record.consecutive_restarts = 0
            await self.spawn_locked(record, reason=f"restarted ({action.reason})")
            return
        if action.automatic:
            record.restart_count += 1
        record.consecutive_restarts = action.attempt
        await self.spawn_locked(record, reason=action.reason, automatic=action.automatic)

    def _need(self, record: CollectorRecord | None) -> CollectorRecord:
        if record is None:
            raise Stale("no record")
        return record

    def _apply(self, action: Start | Restart | Update | Rollback) -> CollectorRecord:
        spec = action.spec
        config = self.configure(action.collector_id, spec)
        record = self.record_for(action.collector_id, spec.type, config)
        record.collector_type = spec.type
        record.config = config
        # Recorded first: a spec whose start fails is still the one applied.
        record.applied = Applied(spec, action.spec_hash, action.process_hash)
        return record

    async def _stop_action(self, action: Stop, record: CollectorRecord | None) -> None:
        if record is None:
            return
        if action.as_crash:
            run = record.run
            if run is None or record.state != CollectorState.RUNNING:
                raise Stale(action.collector_id)
            self.emit(record, "unhealthy", f"{action.reason}; stopping it")
            await self.stop_locked(record, graceful=True, timeout=None)
            now = self.clock.now()
            record.error(action.reason)
            record.exit = Exit(now, action.reason, now - run.started_at)
            record.changed()
            return
        record.desired = DesiredState.STOPPED
        await self.stop_locked(record, graceful=True, timeout=None)
        if action.forget:
            self.forget_locked(record)

    # -- starting ---------------------------------------------------------------

    async def spawn_locked(
        self, record: CollectorRecord, *, reason: str, automatic: bool = False
    ) -> int:
        """Start the record's process (lock held). A failure becomes ``Observed.exit``."""
        await self.driver.open()
        record.state = CollectorState.STARTING
        record.backoff_until = None
        record.changed()
        try:
            run = await self.driver.spawn(
                Launch(record.collector_id, record.collector_type, record.config)
            )
        except SpawnFailed as exc:
            description = f"failed to start: {exc.message}"
            record.state = CollectorState.STOPPED
            record.error(exc.message, exc.code)
            # As supervisord's BACKOFF -> FATAL: the planner retries it under the policy.
            record.exit = Exit(self.clock.now(), description, 0.0)
            self.emit(record, "spawn_failed", description)
            raise
        record.run = run
        record.state = CollectorState.RUNNING
        record.exit = None
        record.gave_up = False
        if record.desired == DesiredState.STOPPED:
            record.desired = DesiredState.RUNNING
        self._watch(record, run)
        self.emit(record, "started", f"pid {run.pid} ({reason})", automatic=automatic)
        self.restart_probe(record, run)
        self.restart_ready_probe(record, run)
        return run.pid

    async def adopt(
        self,
        collector_id: str,
        collector_type: str,
        config: CollectorConfig,
        identity: RunIdentity,
        *,
        applied: Applied | None = None,
    ) -> None:
        if self.closing:
            raise InvalidState("the process manager is shutting down")
        run = await self.driver.adopt(collector_id, config, identity)
        async with self.lock_for(collector_id):
            record = self.records.get(collector_id)
            if record is not None and record.run is not None:
                raise AlreadyRunning(f"collector {collector_id!r} is already {record.state}")
            record = self.record_for(collector_id, collector_type, config)
            record.run = run
            record.applied = applied
            paused = self.driver.is_stopped(run)
            record.state = CollectorState.PAUSED if paused else CollectorState.RUNNING
            record.desired = DesiredState.PAUSED if paused else DesiredState.RUNNING
            self._watch(record, run)
            self.emit(record, "adopted", f"adopted running process (pid {run.pid})")
            self.restart_probe(record, run)
            self.restart_ready_probe(record, run)

    def _watch(self, record: CollectorRecord, run: Run) -> None:
        run.exited.add_done_callback(lambda _: self._on_exit(record, run))

    def _on_exit(self, record: CollectorRecord, run: Run) -> None:
        if record.probe_task is not None and record.run is run:
            record.probe_task.cancel()
        if record.ready_task is not None and record.run is run:
            record.ready_task.cancel()
        if run.stop_requested:
            if record.run is run and record.stop_task is None:
                # A stop that gave up (TERMINATE_FAILED) left it visible; it is gone now.
                record.run = None
                self.driver.release(run)
                record.changed()
            return
        self.spawn_task(self._on_crash(record, run), name=f"exit of {record.collector_id}")

    async def _on_crash(self, record: CollectorRecord, run: Run) -> None:
        async with record.lock:
            if record.run is not run:
                return
            record.run = None
            force = self._force_seconds(record.config)
            try:
                await self.driver.kill_leftovers(run, within_seconds=force)
            finally:
                self.driver.release(run)
            code = run.exited.result()
            now = self.clock.now()
            description = describe_exit(code)
            record.last_exit_code = code
            record.error(description)
            record.state = CollectorState.STOPPED
            record.exit = Exit(now, description, now - run.started_at, clean=code == 0)
            self.emit(record, "exited", description)

    def replace_locked(self, record: CollectorRecord, config: CollectorConfig) -> None:
        """A config whose process identity is unchanged: policy, timeouts and probe apply now."""
        old_check, old_ready = record.config.health_check, record.config.ready_check
        record.config = config
        record.changed()
        self._reprobe_if_changed(record, old_check, old_ready)

    def _reprobe_if_changed(
        self, record: CollectorRecord, old_check: HealthCheck | None, old_ready: ReadyCheck | None
    ) -> None:
        run = record.run
        if run is not None and record.config.health_check != old_check:
            self.restart_probe(record, run)
        if run is not None and record.config.ready_check != old_ready and not record.ready:
            self.restart_ready_probe(record, run)

    def forget_locked(self, record: CollectorRecord) -> None:
        if record.run is not None:
            raise InvalidState(
                f"collector {record.collector_id!r} is {record.state}; stop it first"
            )
        record.changed()
        self.records.pop(record.collector_id, None)
        self._locks.pop(record.collector_id, None)

    # -- stopping ---------------------------------------------------------------

    def _graceful_seconds(self, config: CollectorConfig, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        if config.graceful_timeout_seconds is not None:
            return config.graceful_timeout_seconds
        return self.config.default_graceful_timeout_seconds

    def _force_seconds(self, config: CollectorConfig) -> float:
        if config.force_timeout_seconds is not None:
            return config.force_timeout_seconds
        return self.config.default_force_timeout_seconds

    async def stop_locked(
        self, record: CollectorRecord, *, graceful: bool, timeout: float | None
    ) -> int | None:
        run = record.run
        record.exit = None
        record.backoff_until = None
        if run is None:
            if record.state != CollectorState.STOPPED:
                record.state = CollectorState.STOPPED
                self.emit(record, "stopped", "stopped (no process was running)")
            record.changed()
            return None
        was_paused = record.state == CollectorState.PAUSED
        run.stop_requested = True
        record.state = CollectorState.STOPPING
        record.changed()
        escalate = record.escalate = asyncio.Event()
        if not graceful:
            escalate.set()
        task = asyncio.ensure_future(
            self._terminate(record, run, timeout=timeout, was_paused=was_paused)
        )
        record.stop_task = task
        try:
            code = await asyncio.shield(task)
        except TerminateFailed as exc:
            record.state = CollectorState.FAILED
            record.error(exc.message, exc.code)
            self.emit(record, "failed", exc.message, forced=True)
            raise
        finally:
            record.stop_task = None
        record.run = None
        record.last_exit_code = code
        record.state = CollectorState.STOPPED
        self.driver.release(run)
        self.emit(record, "stopped", f"stopped ({describe_exit(code)})", forced=run.killed)
        return code

    async def _terminate(
        self, record: CollectorRecord, run: Run, *, timeout: float | None, was_paused: bool
    ) -> int | None:
        escalate = record.escalate
        assert escalate is not None, "stop() makes it before it starts this task"
        config = record.config
        graceful_seconds = self._graceful_seconds(config, timeout)
        force_seconds = self._force_seconds(config)
        if not escalate.is_set():
            stop_signal = signal.Signals[config.stop_signal]
            self.driver.signal(run, stop_signal)
            if was_paused:
                # A stopped process cannot act on the stop signal until continued.
                self.driver.signal(run, signal.SIGCONT, whole_tree=True)
            escalated = asyncio.ensure_future(escalate.wait())
            either = asyncio.ensure_future(_first_of(run.exited, escalated))
            try:
                await self.clock.wait(either, graceful_seconds)
            finally:
                either.cancel()
                escalated.cancel()
            if run.exited.done():
                await self.driver.kill_leftovers(run, within_seconds=force_seconds)
                return run.exited.result()
            log.info(
                "%s: still running %.1f s after %s; killing",
                record.collector_id,
                graceful_seconds,
                stop_signal.name,
            )
        self.driver.kill(run)
        if not await self.clock.wait(run.exited, force_seconds):
            raise TerminateFailed(
                f"collector {record.collector_id!r} (pid {run.pid}) is still alive "
                f"{force_seconds:g} s after SIGKILL"
            )
        await self.driver.kill_leftovers(run, within_seconds=force_seconds)
        return run.exited.result()

    # -- pause and resume -------------------------------------------------------

    async def job_control_locked(self, record: CollectorRecord, *, pause: bool) -> None:
        if not hasattr(signal, "SIGSTOP"):
            raise PlatformNotSupported("pause and resume need POSIX job-control signals")
        wanted, source = (
            (CollectorState.PAUSED, CollectorState.RUNNING)
            if pause
            else (CollectorState.RUNNING, CollectorState.PAUSED)
        )
        desired = DesiredState(wanted.value)
        run = record.run
        if record.state != source or run is None:
            verb = "pause" if pause else "resume"
            raise InvalidState(
                f"cannot {verb} collector {record.collector_id!r}: it is {record.state}"
            )
        self.driver.signal(run, signal.SIGSTOP if pause else signal.SIGCONT, whole_tree=True)
        await self.driver.confirm_job_state(run, stopped=pause)
        record.state = wanted
        record.desired = desired
        kind = "paused" if pause else "resumed"
        self.emit(record, kind, f"{kind} (pid {run.pid})")

    # -- shutting down ----------------------------------------------------------

    def owned_runs(self) -> list[Run]:
        return [r.run for r in self.records.values() if r.run is not None]


def _desired(applied: Applied) -> Desired:
    return Desired(applied.spec, applied.spec_hash, applied.process_hash)


async def _first_of(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
