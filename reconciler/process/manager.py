"""``CollectorProcessManager``: the DESIGN §6 library API, a thin façade over the one controller.

DaemonEye's ``CollectorProcessManager`` — start, stop, restart, pause, resume,
health, status, shutdown — with its states and error codes, and without its
gaps: exits come from the kernel (pidfd), whole trees are signalled, crashes
restart with backoff, failed collectors stay visible. Each call records what
the caller wants (a ``Desired`` per collector) and carries it out at once
through the executor; crashes, backoff, giving up and probe restarts are left
to the same ``plan()`` the reconcile loop runs, driven by the same controller.
There is no restart policy here: ``reconciler.plan`` decides, this carries out.

Embedders pass a ``driver`` (``FakeDriver`` in tests; ``PosixDriver`` by
default) and get the same behaviour either way. The reconcile loop drives the
same manager's controller with its spec snapshot instead (``controller.drive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

from reconciler.errors import AlreadyRunning, InvalidState, ProcessManagerError, SpawnFailed
from reconciler.plan.actions import GiveUp, Start, Wait
from reconciler.plan.planner import Desired
from reconciler.process.controller import Controller
from reconciler.process.driver import ProcessDriver, RunIdentity
from reconciler.process.events import ManagerEvent
from reconciler.process.executor import Executor
from reconciler.process.posix import PosixDriver
from reconciler.process.records import Applied, CollectorRecord
from reconciler.spec.identity import spec_hashes
from reconciler.spec.models import (
    CollectorConfig,
    CollectorSpec,
    ProcessManagerConfig,
)
from reconciler.spec.order import after_problems, dependents
from reconciler.state import CollectorState, CollectorStatus, DesiredState, HealthStatus


def library_desired(collector_type: str, config: CollectorConfig, state: DesiredState) -> Desired:
    """A ``Desired`` for a library call: what ``start_collector(id, type, config)`` asks for.

    The hashes leave ``state`` out, so pausing or stopping is never a spec change.
    """
    fields = {name: getattr(config, name) for name in CollectorConfig.model_fields}
    running = CollectorSpec.model_construct(**fields, type=collector_type)
    whole, process = spec_hashes(config)
    digest = hashlib.sha256(f"{collector_type}\0{whole}".encode()).hexdigest()[:16]
    identity = hashlib.sha256(f"{collector_type}\0{process}".encode()).hexdigest()
    spec = running if state == DesiredState.RUNNING else running.model_copy(update={"state": state})
    return Desired(spec=spec, spec_hash=digest, process_hash=identity[:16])


class CollectorProcessManager:
    """Runs collector processes and keeps them running (DESIGN §6).

    ``log_dir``, ``child_subreaper``, ``cgroups``, ``cgroup_name`` and
    ``cgroup_delegated`` configure the default ``PosixDriver`` (see there);
    ``driver`` replaces it (``reconciler.process.FakeDriver`` for tests).
    """

    def __init__(
        self,
        config: ProcessManagerConfig | None = None,
        *,
        log_dir: Path | None = None,
        child_subreaper: bool = False,
        cgroups: bool = True,
        cgroup_name: str | None = None,
        cgroup_delegated: bool = False,
        driver: ProcessDriver | None = None,
    ) -> None:
        self.config = config if config is not None else ProcessManagerConfig()
        self.log_dir = log_dir
        self.driver: ProcessDriver = (
            driver
            if driver is not None
            else PosixDriver(
                log_dir=log_dir,
                child_subreaper=child_subreaper,
                cgroups=cgroups,
                cgroup_name=cgroup_name,
                cgroup_delegated=cgroup_delegated,
            )
        )
        self._share_binaries()
        self.executor = Executor(self.driver, self.config)
        self._wanted: dict[str, Desired] = {}
        self.controller = Controller(self.executor, desired=lambda: self._wanted)
        self._loop_task: asyncio.Task[None] | None = None

    def _share_binaries(self) -> None:
        if isinstance(self.driver, PosixDriver):
            self.driver.collector_binaries = self.config.collector_binaries

    async def _ensure_started(self) -> None:
        if self.executor.closing:
            raise InvalidState("the process manager is shutting down")
        await self.driver.open()
        if not self.controller.driven and self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self.controller.run(), name="process manager controller"
            )

    @property
    def cgroup_tracking(self) -> bool:
        """Whether runs get a cgroup each (known once the first collector started)."""
        return self.driver.cgroup_tracking

    def add_listener(self, listener: Callable[[ManagerEvent], None]) -> None:
        """Call ``listener`` for every event (state change, exit, probe result)."""
        self.executor.add_listener(listener)

    def update_config(self, config: ProcessManagerConfig) -> None:
        """Apply a reloaded ``[process_manager]`` table; running processes are untouched."""
        self.config = config
        self.executor.config = config
        self._share_binaries()
        self.controller.wake()

    def collector_ids(self) -> list[str]:
        return sorted(self.executor.records)

    def _want(self, record: CollectorRecord, state: DesiredState) -> None:
        if not self.controller.driven:
            self._wanted[record.collector_id] = library_desired(
                record.collector_type, record.config, state
            )

    # -- DESIGN §6 --------------------------------------------------------------

    async def start_collector(
        self, collector_id: str, collector_type: str, config: CollectorConfig
    ) -> int:
        """Start a collector; return its pid. ``ALREADY_RUNNING`` if it has a process."""
        await self._ensure_started()
        executor = self.executor
        async with executor.lock_for(collector_id):
            record = executor.records.get(collector_id)
            if record is not None and (
                record.run is not None or record.state == CollectorState.BACKOFF
            ):
                raise AlreadyRunning(f"collector {collector_id!r} is already {record.state}")
            record = executor.record_for(collector_id, collector_type, config)
            record.collector_type, record.config = collector_type, config
            wanted = library_desired(collector_type, config, DesiredState.RUNNING)
            if not self.controller.driven:
                self._wanted[collector_id] = wanted
            record.applied = Applied(wanted.spec, wanted.spec_hash, wanted.process_hash)
            record.consecutive_restarts = 0
            record.desired = DesiredState.RUNNING
            return await self._spawn_or_settle(record, reason="start requested")

    async def _spawn_or_settle(self, record: CollectorRecord, *, reason: str) -> int:
        try:
            return await self.executor.spawn_locked(record, reason=reason)
        except SpawnFailed:
            await self._settle_locked(record)
            raise

    async def _settle_locked(self, record: CollectorRecord) -> None:
        """After a failed start, apply the planner's verdict now (lock held).

        So the caller returns to a collector already retried once, in backoff
        or failed — as supervisord's BACKOFF -> FATAL — rather than to one
        that the controller will get to a moment later.
        """
        while record.exit is not None:
            action = self.controller.plan_one(record.collector_id)
            if isinstance(action, Wait | GiveUp):
                self.executor.note(action)
                return
            if not isinstance(action, Start) or not action.automatic:
                return
            record.restart_count += 1
            record.consecutive_restarts = action.attempt
            with contextlib.suppress(SpawnFailed):
                await self.executor.spawn_locked(record, reason=action.reason, automatic=True)

    async def stop_collector(
        self, collector_id: str, graceful: bool = True, timeout: float | None = None
    ) -> int | None:
        """Stop a collector; return its exit code, or ``None`` if it had no process.

        ``graceful``: stop signal, wait ``timeout`` (default: its graceful
        timeout), then SIGKILL. Not graceful: SIGKILL at once — and if a
        graceful stop is under way, it is escalated to that now.
        """
        record = self.executor.get(collector_id)
        if not graceful and record.stop_task is not None and record.escalate is not None:
            record.escalate.set()
        async with record.lock:
            record.desired = DesiredState.STOPPED
            self._want(record, DesiredState.STOPPED)
            return await self.executor.stop_locked(record, graceful=graceful, timeout=timeout)

    async def restart_collector(
        self,
        collector_id: str,
        timeout: float | None = None,
        *,
        config: CollectorConfig | None = None,
        collector_type: str | None = None,
        reason: str = "restarted",
    ) -> int:
        """Gracefully stop (if running) and start again; return the new pid.

        Also how an operator brings back a ``failed`` collector. With
        ``config`` (and ``collector_type``), the new process runs that spec.
        """
        record = self.executor.get(collector_id)
        async with record.lock:
            if self.executor.closing:
                raise InvalidState("the process manager is shutting down")
            await self.executor.stop_locked(record, graceful=True, timeout=timeout)
            if config is not None:
                record.config = config
            if collector_type is not None:
                record.collector_type = collector_type
            record.restart_count += 1
            record.consecutive_restarts = 0
            record.desired = DesiredState.RUNNING
            self._want(record, DesiredState.RUNNING)
            try:
                return await self.executor.spawn_locked(record, reason=reason)
            except SpawnFailed as exc:
                # An operator's retry answers for itself: failed again, no retries of its own.
                self.executor.note(GiveUp(collector_id, f"failed to start: {exc.message}"))
                raise

    async def replace_config(self, collector_id: str, config: CollectorConfig) -> None:
        """Apply a config whose process identity is unchanged (policy, timeouts, probe)."""
        record = self.executor.get(collector_id)
        async with record.lock:
            self.executor.replace_locked(record, config)
            self._want(record, record.desired)

    async def adopt_collector(
        self,
        collector_id: str,
        collector_type: str,
        config: CollectorConfig,
        *,
        pid: int,
        start_ticks: int,
        started_wall: float,
        cgroup_path: Path | None = None,
        applied: Applied | None = None,
    ) -> None:
        """Take over a collector process started by an earlier manager.

        Adopted only if ``pid`` is still the same process (its kernel start time
        matches ``start_ticks``), so a recycled pid is never taken for a
        collector; ``ProcessNotFound`` otherwise. Its exit status is not ours to learn.
        """
        await self._ensure_started()
        identity = RunIdentity(pid, start_ticks, started_wall, cgroup_path)
        await self.executor.adopt(collector_id, collector_type, config, identity, applied=applied)
        record = self.executor.get(collector_id)
        self._want(record, record.desired)
        if applied is None and not self.controller.driven:
            wanted = self._wanted[collector_id]
            record.applied = Applied(wanted.spec, wanted.spec_hash, wanted.process_hash)

    async def sweep_stale_cgroups(self) -> list[int]:
        """Kill what an earlier manager left that no collector owns (call after adopting).

        Its cgroups' processes, or without cgroups the processes marked with
        this manager's ``cgroup_name``: a start that a crash kept from being
        recorded never yields a second process for the collector.
        """
        return await self.driver.sweep_stale(self.executor.owned_runs())

    def run_identity(self, collector_id: str) -> RunIdentity | None:
        """What a later manager needs to adopt this collector's process."""
        return self.executor.run_identity(collector_id)

    async def forget_collector(self, collector_id: str) -> None:
        """Drop a collector that has no process (stopped or failed) from view."""
        record = self.executor.get(collector_id)
        async with record.lock:
            self.executor.forget_locked(record)
            self._wanted.pop(collector_id, None)

    async def pause_collector(self, collector_id: str) -> None:
        """SIGSTOP the collector's whole tree; confirmed from the kernel's view."""
        await self._job_control(collector_id, pause=True)

    async def resume_collector(self, collector_id: str) -> None:
        """SIGCONT a paused collector's whole tree; confirmed from the kernel's view."""
        await self._job_control(collector_id, pause=False)

    async def _job_control(self, collector_id: str, *, pause: bool) -> None:
        record = self.executor.get(collector_id)
        async with record.lock:
            await self.executor.job_control_locked(record, pause=pause)
            self._want(record, record.desired)

    async def check_collector_health(self, collector_id: str) -> HealthStatus:
        """Health per DESIGN §4, from the kernel's view and the last probe results."""
        return self.executor.get(collector_id).health()

    async def get_collector_status(self, collector_id: str) -> CollectorStatus:
        return self.status(collector_id)

    def status(self, collector_id: str) -> CollectorStatus:
        """Synchronous ``get_collector_status``, for metrics and the API."""
        return self.executor.status(collector_id)

    def state_of(self, collector_id: str) -> CollectorState:
        return self.executor.get(collector_id).state

    def config_of(self, collector_id: str) -> CollectorConfig:
        return self.executor.get(collector_id).config

    def tree_pids(self, collector_id: str) -> list[int]:
        """Every live pid of the collector's current run (its cgroup, or its group)."""
        run = self.executor.get(collector_id).run
        return [] if run is None else self.driver.tree_pids(run)

    def all_tree_pids(self) -> dict[str, list[int]]:
        """``tree_pids`` of every collector with a process, in one sweep."""
        return self.driver.all_tree_pids(self.executor.runs())

    async def _stop_in_order(self, ids: list[str]) -> list[object]:
        """Stop every collector, each once those that start after it (``after``) are down;
        the others concurrently."""
        records = self.executor.records
        after = {
            cid: [name for name in applied.spec.after if name in records]
            for cid in ids
            if (applied := records[cid].applied) is not None
        }
        # Specs are checked for cycles as they load, but what runs may predate a check:
        # a collector on a cycle waits for nobody, so a stop can never wait for itself.
        for cid in after_problems(after, known=records):
            after[cid] = []
        first = dependents(after)
        stops: dict[str, asyncio.Task[int | None]] = {}

        async def stop(collector_id: str) -> int | None:
            waiting = [stops[cid] for cid in first.get(collector_id, ()) if cid in stops]
            if waiting:
                await asyncio.wait(waiting)
            return await self.stop_collector(collector_id)

        for cid in ids:
            stops[cid] = asyncio.ensure_future(stop(cid))
        return list(await asyncio.gather(*stops.values(), return_exceptions=True))

    async def shutdown_all(self) -> None:
        """Stop every collector concurrently and release the manager's resources.

        Raises the first ``TerminateFailed`` (if any) once all stops finished.
        """
        executor = self.executor
        executor.closing = True
        if self._loop_task is not None:
            await self.controller.hold()
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for record in executor.records.values():
            record.backoff_until = None
            if record.state == CollectorState.BACKOFF:
                record.state = CollectorState.STOPPED
        results = await self._stop_in_order(list(executor.records))
        await executor.cancel_tasks()
        await self.driver.close()
        executor.closing = False
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            if not isinstance(error, ProcessManagerError):
                raise error
        if errors:
            raise errors[0]
