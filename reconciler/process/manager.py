"""``CollectorProcessManager``: start, stop, restart, pause and resume collectors.

The asyncio process manager whose API, states and error codes follow
DaemonEye's ``CollectorProcessManager`` (DESIGN §4-§6), without its gaps:
exits are seen through the kernel (pidfd), whole process trees are signalled
(process group, and a cgroup per run where the kernel allows, so setsid and
double-fork escapees are found too), crashes restart with exponential backoff
(``reconciler.plan.policy``), and failed collectors stay visible.

Operations on one collector are serialised by its lock; different collectors
proceed concurrently. A forced stop asked for during a graceful one escalates
it at once. The reconcile loop is built on this API; embedders may use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from reconciler.errors import (
    AlreadyRunning,
    InvalidState,
    Io,
    PlatformNotSupported,
    ProcessManagerError,
    ProcessNotFound,
    SpawnFailed,
    TerminateFailed,
    Timeout,
)
from reconciler.plan.policy import GiveUp, NoRestart, RestartPolicy, decide_restart
from reconciler.process import spawn
from reconciler.process.binary import resolve_binary
from reconciler.process.cgroup import CgroupTree, RunCgroup
from reconciler.process.clock import now
from reconciler.process.exits import ExitWatcher, set_child_subreaper
from reconciler.process.health import run_probe
from reconciler.spec.models import CollectorConfig, ProcessManagerConfig, ResourceLimits
from reconciler.state import (
    PROCESS_STATES,
    TRANSITIONAL_STATES,
    CollectorState,
    CollectorStatus,
    DesiredState,
    HealthStatus,
)

log = logging.getLogger(__name__)

SPAWN_RETRY_SECONDS = 0.01
SPAWN_THREADS = 4
"""Fork/exec blocks until the child has exec'd, and cgroup set-up (mkdir, open,
the child's join) takes kernel-wide locks for milliseconds: a small fixed pool
keeps all of that off the event loop and lets concurrent starts overlap. The
thread count stays constant."""
STATE_CONFIRM_SECONDS = 2.0
ESCAPEE_SETTLE_SECONDS = 0.002


def describe_exit(returncode: int | None) -> str:
    """Human words for an exit code as subprocess reports it (negative: signal)."""
    if returncode is None:
        return "exited (status unknown: adopted from an earlier reconciler)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


@dataclass(frozen=True, slots=True)
class ManagerEvent:
    """Something the manager did or saw, for logs, the event record and the loop."""

    collector_id: str
    kind: str
    message: str
    wall_time: float
    automatic: bool = False
    """On ``started``: a restart the restart policy made (after a crash or backoff)."""
    forced: bool = False
    """On ``stopped`` and ``failed``: the stop had to SIGKILL."""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """A running collector process, as recorded in the state file for adoption."""

    pid: int
    start_ticks: int
    started_wall: float
    cgroup_path: Path | None


@dataclass
class _Run:
    """One process of a collector, from spawn to reap."""

    pid: int
    started_at: float
    started_wall: float
    cgroup: RunCgroup | None
    exited: asyncio.Future[int | None]
    env: dict[str, str]
    start_ticks: int | None = None
    """Kernel start time of the process: with the pid, its identity across restarts."""
    adopted: bool = False
    stop_requested: bool = False
    killed: bool = False
    """The stop had to SIGKILL (graceful timeout, escalation or forced stop)."""
    probe_task: asyncio.Task[None] | None = None
    probe_failures: int = 0
    probe_passed: bool | None = None


@dataclass
class _Collector:
    collector_id: str
    collector_type: str
    config: CollectorConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: CollectorState = CollectorState.STOPPED
    desired: DesiredState = DesiredState.RUNNING
    run: _Run | None = None
    restart_count: int = 0
    consecutive_restarts: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    backoff_until: float | None = None
    backoff_timer: asyncio.TimerHandle | None = None
    stop_task: asyncio.Task[int | None] | None = None
    escalate: asyncio.Event = field(default_factory=asyncio.Event)


class CollectorProcessManager:
    """Runs collector processes and keeps them running (DESIGN §6).

    ``log_dir`` is where ``log = "file"`` collectors write ``<id>.log``; without
    it such collectors inherit the manager's stdout and stderr.
    ``child_subreaper`` makes this process inherit, and reap, the orphans of
    its collectors; the manager then reaps every exited child of the process
    that it did not start itself, so leave it off when embedding in a program
    that waits for children of its own. ``cgroups`` (default: where possible)
    gives each run a cgroup v2 for exact tracking and kill of its whole tree.
    ``cgroup_delegated``: this process owns its cgroup (systemd ``Delegate=yes``)
    and may move itself into a leaf so that memory, pids and cpu limits can be
    enforced by cgroup; leave it off when embedding.
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
    ) -> None:
        self.config = config if config is not None else ProcessManagerConfig()
        self.log_dir = log_dir
        self._child_subreaper = child_subreaper
        self._want_cgroups = cgroups
        self._cgroup_name = cgroup_name
        self._cgroup_delegated = cgroup_delegated
        self._cgroups: CgroupTree | None = None
        self._watcher: ExitWatcher | None = None
        self._collectors: dict[str, _Collector] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._listeners: list[Callable[[ManagerEvent], None]] = []
        self._closing = False
        self._spawner: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------

    def _ensure_started(self) -> ExitWatcher:
        if self._watcher is None:
            if self._child_subreaper and not set_child_subreaper(True):
                log.warning("cannot become a child subreaper; orphaned descendants go to init")
            self._watcher = ExitWatcher(
                asyncio.get_running_loop(), reap_orphans=self._child_subreaper
            )
            self._cgroups = (
                CgroupTree.detect(self._cgroup_name, move_self_to_leaf=self._cgroup_delegated)
                if self._want_cgroups
                else None
            )
            self._spawner = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="spawn")
            log.debug(
                "process tracking: %s",
                f"cgroup {self._cgroups.path}" if self._cgroups else "process groups",
            )
        return self._watcher

    @property
    def cgroup_tracking(self) -> bool:
        """Whether runs get a cgroup each (known once the first collector started)."""
        return self._cgroups is not None

    def add_listener(self, listener: Callable[[ManagerEvent], None]) -> None:
        """Call ``listener`` for every event (state change, exit, probe result)."""
        self._listeners.append(listener)

    def update_config(self, config: ProcessManagerConfig) -> None:
        """Apply a reloaded ``[process_manager]`` table; running processes are untouched."""
        self.config = config

    def _emit(
        self,
        collector: _Collector,
        kind: str,
        message: str,
        *,
        automatic: bool = False,
        forced: bool = False,
    ) -> None:
        event = ManagerEvent(
            collector.collector_id, kind, message, time.time(), automatic=automatic, forced=forced
        )
        log.info("%s: %s", collector.collector_id, message)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def _spawn_task(self, coro: Coroutine[object, object, object], *, name: str) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def _get(self, collector_id: str) -> _Collector:
        try:
            return self._collectors[collector_id]
        except KeyError:
            raise ProcessNotFound(f"no collector {collector_id!r}") from None

    def collector_ids(self) -> list[str]:
        return sorted(self._collectors)

    # -- public API (DESIGN §6) ----------------------------------------------

    async def start_collector(
        self, collector_id: str, collector_type: str, config: CollectorConfig
    ) -> int:
        """Start a collector; return its pid. ``ALREADY_RUNNING`` if it has a process."""
        if self._closing:
            raise InvalidState("the process manager is shutting down")
        self._ensure_started()
        lock = self._locks.setdefault(collector_id, asyncio.Lock())
        async with lock:
            collector = self._collectors.get(collector_id)
            if collector is not None and (
                collector.run is not None or collector.state == CollectorState.BACKOFF
            ):
                raise AlreadyRunning(f"collector {collector_id!r} is already {collector.state}")
            if collector is None:
                collector = _Collector(collector_id, collector_type, config, lock=lock)
                self._collectors[collector_id] = collector
            collector.collector_type = collector_type
            collector.config = config
            collector.consecutive_restarts = 0
            collector.desired = DesiredState.RUNNING
            try:
                return await self._spawn(collector, reason="start requested")
            except SpawnFailed as exc:
                # As supervisord's BACKOFF -> FATAL: a binary not yet deployed is
                # retried under the restart policy; the caller still hears of it.
                await self._after_unexpected_end(
                    collector,
                    run_seconds=0.0,
                    description=f"failed to start: {exc.message}",
                    clean=False,
                )
                raise

    async def stop_collector(
        self, collector_id: str, graceful: bool = True, timeout: float | None = None
    ) -> int | None:
        """Stop a collector; return its exit code, or ``None`` if it had no process.

        ``graceful``: stop signal, wait ``timeout`` (default: its graceful
        timeout), then SIGKILL. Not graceful: SIGKILL at once — and if a
        graceful stop is under way, it is escalated to that now.
        """
        collector = self._get(collector_id)
        if not graceful and collector.stop_task is not None:
            collector.escalate.set()
        async with collector.lock:
            collector.desired = DesiredState.STOPPED
            return await self._stop_locked(collector, graceful=graceful, timeout=timeout)

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
        collector = self._get(collector_id)
        async with collector.lock:
            if self._closing:
                raise InvalidState("the process manager is shutting down")
            await self._stop_locked(collector, graceful=True, timeout=timeout)
            if config is not None:
                collector.config = config
            if collector_type is not None:
                collector.collector_type = collector_type
            collector.restart_count += 1
            collector.consecutive_restarts = 0
            collector.desired = DesiredState.RUNNING
            return await self._spawn(collector, reason=reason)

    async def replace_config(self, collector_id: str, config: CollectorConfig) -> None:
        """Apply a config whose process identity is unchanged (policy, timeouts, probe).

        No restart: the running process keeps going; the new restart policy,
        timeouts and health check apply from now on.
        """
        collector = self._get(collector_id)
        async with collector.lock:
            old_check = collector.config.health_check
            collector.config = config
            run = collector.run
            if run is not None and config.health_check != old_check:
                self._restart_probe(collector, run)

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
    ) -> None:
        """Take over a collector process started by an earlier manager.

        After a reconciler restart (``on_exit = "keep"``, or the reconciler was
        killed) its collectors still run. They are adopted only if ``pid`` is
        still the same process (its kernel start time matches ``start_ticks``),
        so a recycled pid is never taken for a collector; ``ProcessNotFound``
        otherwise. An adopted process is watched through a pidfd like any
        other, but its exit status is not ours to learn.
        """
        if self._closing:
            raise InvalidState("the process manager is shutting down")
        watcher = self._ensure_started()
        if process_start_ticks(pid) != start_ticks or _kernel_state(pid) in (None, "Z", "X"):
            raise ProcessNotFound(f"pid {pid} of collector {collector_id!r} is no longer running")
        lock = self._locks.setdefault(collector_id, asyncio.Lock())
        async with lock:
            collector = self._collectors.get(collector_id)
            if collector is not None and collector.run is not None:
                raise AlreadyRunning(f"collector {collector_id!r} is already {collector.state}")
            if collector is None:
                collector = _Collector(collector_id, collector_type, config, lock=lock)
                self._collectors[collector_id] = collector
            cgroup = None
            if cgroup_path is not None and (cgroup_path / "cgroup.procs").exists():
                cgroup = RunCgroup(path=cgroup_path, controllers=frozenset())
            run = _Run(
                pid=pid,
                started_at=now() - max(0.0, time.time() - started_wall),
                started_wall=started_wall,
                cgroup=cgroup,
                exited=asyncio.get_running_loop().create_future(),
                env=spawn.build_env(
                    collector_id=collector_id,
                    spec_env=config.env,
                    identity=None,
                    parent_env=os.environ,
                ),
                start_ticks=start_ticks,
                adopted=True,
            )
            try:
                watcher.watch_pid(pid, lambda code: self._on_exit(collector, run, code))
            except ProcessLookupError:
                raise ProcessNotFound(f"pid {pid} of collector {collector_id!r} exited") from None
            collector.run = run
            paused = _kernel_state(pid) in ("T", "t")
            collector.state = CollectorState.PAUSED if paused else CollectorState.RUNNING
            collector.desired = DesiredState.PAUSED if paused else DesiredState.RUNNING
            self._emit(collector, "adopted", f"adopted running process (pid {pid})")
            self._restart_probe(collector, run)

    async def sweep_stale_cgroups(self) -> list[int]:
        """Kill what is left in run cgroups no collector owns (call after adopting).

        A collector whose main process died while no reconciler watched it can
        leave children behind; they are found in its cgroup and killed here.
        """
        self._ensure_started()
        if self._cgroups is None:
            return []
        owned = {
            c.run.cgroup.path
            for c in self._collectors.values()
            if c.run is not None and c.run.cgroup is not None
        }
        killed: list[int] = []
        for stale in self._cgroups.children():
            if stale.path in owned:
                continue
            pids = stale.pids()
            if pids:
                stale.kill()
                killed.extend(pids)
                deadline = now() + self.config.default_force_timeout_seconds
                while stale.pids() and now() < deadline:
                    await asyncio.sleep(ESCAPEE_SETTLE_SECONDS)
            stale.remove()
        return killed

    def run_identity(self, collector_id: str) -> RunIdentity | None:
        """What a later manager needs to adopt this collector's process."""
        run = self._get(collector_id).run
        if run is None or run.start_ticks is None or run.exited.done():
            return None
        return RunIdentity(
            pid=run.pid,
            start_ticks=run.start_ticks,
            started_wall=run.started_wall,
            cgroup_path=run.cgroup.path if run.cgroup is not None else None,
        )

    async def forget_collector(self, collector_id: str) -> None:
        """Drop a collector that has no process (stopped or failed) from view."""
        collector = self._get(collector_id)
        async with collector.lock:
            if collector.run is not None:
                raise InvalidState(
                    f"collector {collector_id!r} is {collector.state}; stop it first"
                )
            self._cancel_backoff(collector)
            self._collectors.pop(collector_id, None)
            self._locks.pop(collector_id, None)

    async def pause_collector(self, collector_id: str) -> None:
        """SIGSTOP the collector's whole tree; confirmed from the kernel's view."""
        await self._job_control(collector_id, pause=True)

    async def resume_collector(self, collector_id: str) -> None:
        """SIGCONT a paused collector's whole tree; confirmed from the kernel's view."""
        await self._job_control(collector_id, pause=False)

    async def _job_control(self, collector_id: str, *, pause: bool) -> None:
        _require_job_control()
        collector = self._get(collector_id)
        wanted, source = (
            (CollectorState.PAUSED, CollectorState.RUNNING)
            if pause
            else (CollectorState.RUNNING, CollectorState.PAUSED)
        )
        async with collector.lock:
            desired = DesiredState(wanted.value)
            if collector.state == wanted:
                collector.desired = desired
                return
            run = collector.run
            if collector.state != source or run is None:
                verb = "pause" if pause else "resume"
                raise InvalidState(
                    f"cannot {verb} collector {collector_id!r}: it is {collector.state}"
                )
            self._signal_tree(run, signal.SIGSTOP if pause else signal.SIGCONT)
            await self._confirm_stopped(run, stopped=pause)
            collector.state = wanted
            collector.desired = desired
            kind = "paused" if pause else "resumed"
            self._emit(collector, kind, f"{kind} (pid {run.pid})")

    async def check_collector_health(self, collector_id: str) -> HealthStatus:
        """Health per DESIGN §4, from the kernel's view and the last probe results."""
        return self._health(self._get(collector_id))

    async def get_collector_status(self, collector_id: str) -> CollectorStatus:
        return self.status(collector_id)

    def status(self, collector_id: str) -> CollectorStatus:
        """Synchronous ``get_collector_status``, for metrics and the API."""
        collector = self._get(collector_id)
        run = collector.run
        current = now()
        backoff = 0.0
        if collector.state == CollectorState.BACKOFF and collector.backoff_until is not None:
            backoff = max(0.0, collector.backoff_until - current)
        return CollectorStatus(
            collector_id=collector.collector_id,
            collector_type=collector.collector_type,
            state=collector.state,
            desired=collector.desired,
            health=self._health(collector),
            pid=run.pid if run is not None else None,
            start_time=run.started_wall if run is not None else None,
            uptime_seconds=current - run.started_at if run is not None else 0.0,
            restart_count=collector.restart_count,
            consecutive_restarts=collector.consecutive_restarts,
            last_exit_code=collector.last_exit_code,
            last_error=collector.last_error,
            backoff_seconds=backoff,
            probe_failures=run.probe_failures if run is not None else 0,
        )

    def state_of(self, collector_id: str) -> CollectorState:
        """Just the state: what the reconcile loop reads for every collector on every pass."""
        return self._get(collector_id).state

    def config_of(self, collector_id: str) -> CollectorConfig:
        return self._get(collector_id).config

    def tree_pids(self, collector_id: str) -> list[int]:
        """Every live pid of the collector's current run (its cgroup, or its group)."""
        run = self._get(collector_id).run
        return [] if run is None else self._tree_members(run)

    def all_tree_pids(self) -> dict[str, list[int]]:
        """``tree_pids`` of every collector with a process, in one sweep.

        With cgroups, one ``cgroup.procs`` read per collector; without, one
        scan of the process table for all of them (not one per collector).
        """
        runs = {cid: c.run for cid, c in self._collectors.items() if c.run is not None}
        if self._cgroups is not None:
            return {
                cid: run.cgroup.pids() if run.cgroup is not None else [run.pid]
                for cid, run in runs.items()
            }
        by_leader: dict[int, list[int]] = {run.pid: [] for run in runs.values()}
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                leader = os.getsid(proc.pid)
                if leader not in by_leader:
                    leader = os.getpgid(proc.pid)
            except OSError:
                continue
            if leader in by_leader:
                by_leader[leader].append(proc.pid)
        return {cid: sorted(by_leader[run.pid]) for cid, run in runs.items()}

    async def shutdown_all(self) -> None:
        """Stop every collector concurrently and release the manager's resources.

        Raises the first ``TerminateFailed`` (if any) once all stops finished.
        """
        self._closing = True
        for collector in self._collectors.values():
            self._cancel_backoff(collector)
        results = await asyncio.gather(
            *(self.stop_collector(cid) for cid in list(self._collectors)),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
            if self._child_subreaper:
                set_child_subreaper(False)
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None
        self._closing = False
        for error in errors:
            if not isinstance(error, ProcessManagerError):
                raise error
        if errors:
            raise errors[0]

    # -- spawning -------------------------------------------------------------

    async def _spawn(self, collector: _Collector, *, reason: str, automatic: bool = False) -> int:
        """Start the collector's process (lock held); ``failed`` on error.

        The caller applies the restart policy to a failure, which may turn
        ``failed`` into ``backoff``.
        """
        collector.state = CollectorState.STARTING
        self._cancel_backoff(collector)
        try:
            run = await self._launch(collector)
        except SpawnFailed as exc:
            collector.state = CollectorState.FAILED
            collector.last_error = exc.message
            self._emit(collector, "spawn_failed", f"failed to start: {exc.message}")
            raise
        collector.run = run
        collector.state = CollectorState.RUNNING
        if collector.desired == DesiredState.STOPPED:
            collector.desired = DesiredState.RUNNING
        self._emit(collector, "started", f"pid {run.pid} ({reason})", automatic=automatic)
        self._restart_probe(collector, run)
        return run.pid

    async def _launch(self, collector: _Collector) -> _Run:
        watcher = self._ensure_started()
        config = collector.config
        argv0 = resolve_binary(
            collector_type=collector.collector_type,
            binary_path=config.binary_path,
            collector_binaries=self.config.collector_binaries,
            search_path=os.environ.get("PATH"),
        )
        spawn.check_launchable(config)
        identity = spawn.resolve_identity(config.user, config.group)
        env = spawn.build_env(
            collector_id=collector.collector_id,
            spec_env=config.env,
            identity=identity,
            parent_env=os.environ,
        )
        limits = config.resource_limits
        # mkdir and open in cgroupfs take the kernel's cgroup locks: off the loop.
        cgroup, enforced, cgroup_fd = await asyncio.get_running_loop().run_in_executor(
            self._spawner, self._prepare_cgroup, collector.collector_id, limits
        )
        wants_cpu = limits is not None and limits.cpu_max_percent is not None
        if wants_cpu and "cpu_max_percent" not in enforced:
            log.warning(
                "%s: cpu_max_percent needs the cgroup v2 cpu controller, which is not "
                "available here; not enforced",
                collector.collector_id,
            )
        request = spawn.LaunchRequest(
            collector_id=collector.collector_id,
            argv=[argv0, *config.args],
            env=env,
            working_dir=config.working_dir,
            identity=identity,
            rlimits=spawn.rlimits_for(limits, enforced_by_cgroup=enforced),
            cgroup_fd=cgroup_fd,
            log_mode=config.log,
            log_path=(
                self.log_dir / f"{collector.collector_id}.log" if self.log_dir is not None else None
            ),
        )
        try:
            with watcher.spawning():
                popen, start_ticks = await self._fork_exec(request)
                run = _Run(
                    pid=popen.pid,
                    started_at=now(),
                    started_wall=time.time(),
                    cgroup=cgroup,
                    exited=asyncio.get_running_loop().create_future(),
                    env=env,
                )
                run.start_ticks = start_ticks
                watcher.watch(popen, lambda code: self._on_exit(collector, run, code))
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
        return run

    async def _fork_exec(
        self, request: spawn.LaunchRequest
    ) -> tuple[subprocess.Popen[bytes], int | None]:
        """Spawn in a spawn thread; return the child and its kernel start time."""
        loop = asyncio.get_running_loop()
        for _ in range(spawn.ETXTBSY_RETRIES):
            popen, start_ticks = await loop.run_in_executor(
                self._spawner, _spawn_identified, request
            )
            if popen is not None:
                return popen, start_ticks
            await asyncio.sleep(SPAWN_RETRY_SECONDS)
        raise SpawnFailed(f"cannot start {request.argv[0]}: text file busy (still being written)")

    def _prepare_cgroup(
        self, collector_id: str, limits: ResourceLimits | None
    ) -> tuple[RunCgroup | None, set[str], int | None]:
        """Create the run's cgroup, write its limits, open it for the child to join.

        Runs in a spawn thread: cgroupfs operations take kernel-wide locks.
        """
        if self._cgroups is None:
            return None, set(), None
        try:
            cgroup = self._cgroups.create(collector_id)
        except OSError as exc:
            raise SpawnFailed(f"cannot set up tracking for {collector_id!r}: {exc}") from exc
        try:
            enforced: set[str] = set()
            if limits is not None:
                enforced = cgroup.apply_limits(
                    memory_max_bytes=limits.memory_max_bytes,
                    processes=limits.processes,
                    cpu_max_percent=limits.cpu_max_percent,
                )
            return cgroup, enforced, cgroup.open_procs_for_child()
        except OSError as exc:
            cgroup.remove()
            raise SpawnFailed(f"cannot set up the cgroup of {collector_id!r}: {exc}") from exc

    # -- exits, crashes, backoff ----------------------------------------------

    def _on_exit(self, collector: _Collector, run: _Run, returncode: int | None) -> None:
        """Called by the exit watcher, in the loop, once the process is reaped."""
        if not run.exited.done():
            run.exited.set_result(returncode)
        if run.probe_task is not None:
            run.probe_task.cancel()
        if run.stop_requested:
            if collector.run is run and collector.stop_task is None:
                # A stop that gave up (TERMINATE_FAILED) left it visible; it is gone now.
                collector.run = None
                self._release(run)
            return
        self._spawn_task(
            self._handle_crash(collector, run, returncode),
            name=f"crash handling for {collector.collector_id}",
        )

    async def _handle_crash(self, collector: _Collector, run: _Run, returncode: int | None) -> None:
        async with collector.lock:
            if collector.run is not run:
                return
            collector.run = None
            await self._kill_leftovers(run)
            collector.last_exit_code = returncode
            description = describe_exit(returncode)
            collector.last_error = description
            self._emit(collector, "exited", description)
            await self._after_unexpected_end(
                collector,
                run_seconds=now() - run.started_at,
                description=description,
                clean=returncode == 0,
            )

    async def _after_unexpected_end(
        self, collector: _Collector, *, run_seconds: float, description: str, clean: bool
    ) -> None:
        """Apply the restart policy after an exit nobody asked for (lock held).

        ``clean``: the process exited 0, so without auto-restart it is ``stopped``,
        not ``failed``.
        """
        while True:
            decision = decide_restart(
                RestartPolicy.resolve(collector.config, self.config),
                consecutive_restarts=collector.consecutive_restarts,
                run_seconds=run_seconds,
                exit_description=description,
                jitter_key=collector.collector_id,
            )
            if isinstance(decision, NoRestart):
                collector.state = CollectorState.STOPPED if clean else CollectorState.FAILED
                self._emit(collector, "stopped" if clean else "failed", decision.reason)
                return
            if isinstance(decision, GiveUp):
                collector.state = CollectorState.FAILED
                collector.last_error = decision.reason
                self._emit(collector, "failed", decision.reason)
                return
            collector.consecutive_restarts = decision.attempt
            if decision.delay_seconds > 0:
                self._enter_backoff(collector, decision.delay_seconds)
                return
            collector.restart_count += 1
            try:
                await self._spawn(
                    collector, reason=f"restarted after crash ({description})", automatic=True
                )
                return
            except SpawnFailed as exc:
                # A binary mid-deploy is a crash of zero length: retry with backoff.
                run_seconds, description = 0.0, f"failed to start: {exc.message}"
                clean = False

    def _enter_backoff(self, collector: _Collector, delay_seconds: float) -> None:
        collector.state = CollectorState.BACKOFF
        collector.backoff_until = now() + delay_seconds
        collector.backoff_timer = asyncio.get_running_loop().call_later(
            delay_seconds,
            lambda: self._spawn_task(
                self._restart_after_backoff(collector),
                name=f"backoff restart of {collector.collector_id}",
            ),
        )
        self._emit(
            collector,
            "backoff",
            f"backoff {delay_seconds:.1f} s before restart {collector.consecutive_restarts}",
        )

    async def _restart_after_backoff(self, collector: _Collector) -> None:
        async with collector.lock:
            if collector.state != CollectorState.BACKOFF or self._closing:
                return
            collector.backoff_timer = None
            collector.restart_count += 1
            try:
                await self._spawn(collector, reason="restarted after backoff", automatic=True)
            except SpawnFailed as exc:
                await self._after_unexpected_end(
                    collector,
                    run_seconds=0.0,
                    description=f"failed to start: {exc.message}",
                    clean=False,
                )

    def _cancel_backoff(self, collector: _Collector) -> None:
        if collector.backoff_timer is not None:
            collector.backoff_timer.cancel()
            collector.backoff_timer = None
        collector.backoff_until = None

    # -- stopping -------------------------------------------------------------

    async def _stop_locked(
        self, collector: _Collector, *, graceful: bool, timeout: float | None
    ) -> int | None:
        run = collector.run
        if run is None:
            self._cancel_backoff(collector)
            if collector.state != CollectorState.STOPPED:
                collector.state = CollectorState.STOPPED
                self._emit(collector, "stopped", "stopped (no process was running)")
            return None
        was_paused = collector.state == CollectorState.PAUSED
        run.stop_requested = True
        collector.state = CollectorState.STOPPING
        collector.escalate = asyncio.Event()
        if not graceful:
            collector.escalate.set()
        task = asyncio.ensure_future(
            self._terminate(collector, run, timeout=timeout, was_paused=was_paused)
        )
        collector.stop_task = task
        try:
            code = await asyncio.shield(task)
        except TerminateFailed as exc:
            collector.state = CollectorState.FAILED
            collector.last_error = exc.message
            self._emit(collector, "failed", exc.message, forced=True)
            raise
        finally:
            collector.stop_task = None
        collector.run = None
        collector.last_exit_code = code
        collector.state = CollectorState.STOPPED
        self._release(run)
        self._emit(collector, "stopped", f"stopped ({describe_exit(code)})", forced=run.killed)
        return code

    async def _terminate(
        self, collector: _Collector, run: _Run, *, timeout: float | None, was_paused: bool
    ) -> int | None:
        config = collector.config
        graceful_seconds = (
            timeout
            if timeout is not None
            else config.graceful_timeout_seconds
            if config.graceful_timeout_seconds is not None
            else self.config.default_graceful_timeout_seconds
        )
        force_seconds = (
            config.force_timeout_seconds
            if config.force_timeout_seconds is not None
            else self.config.default_force_timeout_seconds
        )
        if not collector.escalate.is_set():
            stop_signal = signal.Signals[config.stop_signal]
            self._signal_group(run, stop_signal)
            if was_paused:
                # A stopped process cannot act on the stop signal until continued.
                self._signal_tree(run, signal.SIGCONT)
            escalated: asyncio.Future[object] = asyncio.ensure_future(collector.escalate.wait())
            try:
                exited: asyncio.Future[object] = run.exited  # type: ignore[assignment]
                await asyncio.wait(
                    {exited, escalated},
                    timeout=graceful_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                escalated.cancel()
            if run.exited.done():
                await self._kill_leftovers(run, within_seconds=force_seconds)
                return run.exited.result()
            log.info(
                "%s: still running %.1f s after %s; killing",
                collector.collector_id,
                graceful_seconds,
                stop_signal.name,
            )
        self._kill_tree(run)
        try:
            code = await asyncio.wait_for(asyncio.shield(run.exited), force_seconds)
        except TimeoutError:
            raise TerminateFailed(
                f"collector {collector.collector_id!r} (pid {run.pid}) is still alive "
                f"{force_seconds:g} s after SIGKILL"
            ) from None
        await self._kill_leftovers(run, within_seconds=force_seconds)
        return code

    async def _kill_leftovers(self, run: _Run, *, within_seconds: float = 5.0) -> None:
        """After the main process is gone, SIGKILL what remains of its tree."""
        deadline = now() + within_seconds
        while members := self._tree_members(run):
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if run.cgroup is not None:
                run.cgroup.kill()
            if now() >= deadline:
                raise TerminateFailed(
                    f"processes {members} of pid {run.pid} survive SIGKILL for {within_seconds:g} s"
                )
            # Killed processes leave the tree within microseconds; the kernel
            # offers no portable notification for that, so look again shortly.
            await asyncio.sleep(ESCAPEE_SETTLE_SECONDS)

    def _release(self, run: _Run) -> None:
        if run.cgroup is not None and not run.cgroup.remove():
            log.debug("cgroup %s not yet empty; left for shutdown", run.cgroup.path)

    # -- signals and the process tree -----------------------------------------

    def _signal_group(self, run: _Run, signum: int) -> None:
        """The collector's process group: what DESIGN §4 sends the stop signal to."""
        try:
            os.killpg(run.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise Io(f"cannot signal process group {run.pid}: {exc.strerror}") from exc

    def _signal_tree(self, run: _Run, signum: int) -> None:
        """The whole tree, escapees included (pause, resume)."""
        self._signal_group(run, signum)
        for pid in self._tree_members(run):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _kill_tree(self, run: _Run) -> None:
        run.killed = True
        if run.cgroup is not None:
            run.cgroup.kill()
        self._signal_tree(run, signal.SIGKILL)

    def _tree_members(self, run: _Run) -> list[int]:
        """Live processes of this run other than reaped ones: cgroup, else group + session."""
        if run.cgroup is not None:
            return run.cgroup.pids()
        members: set[int] = set()
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == run.pid or os.getpgid(proc.pid) == run.pid:
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        members.add(proc.pid)
            except (OSError, psutil.Error):
                continue
        return sorted(members)

    async def _confirm_stopped(self, run: _Run, *, stopped: bool) -> None:
        """Wait until the kernel shows every process of the tree stopped (or running)."""
        deadline = now() + STATE_CONFIRM_SECONDS
        while True:
            if run.exited.done() or _kernel_state(run.pid) is None:
                raise InvalidState(f"pid {run.pid} exited before it could be confirmed")
            states = {pid: _kernel_state(pid) for pid in {run.pid, *self._tree_members(run)}}
            pending = {
                pid: state
                for pid, state in states.items()
                if state is not None and state not in "ZX" and (state in "Tt") != stopped
            }
            if not pending:
                return
            if now() >= deadline:
                raise Timeout(
                    f"processes {sorted(pending)} did not {'stop' if stopped else 'continue'} "
                    f"within {STATE_CONFIRM_SECONDS:g} s"
                )
            # The kernel does not notify a non-waiting parent of SIGSTOP/SIGCONT.
            await asyncio.sleep(0.001)

    # -- health ---------------------------------------------------------------

    def _restart_probe(self, collector: _Collector, run: _Run) -> None:
        if run.probe_task is not None:
            run.probe_task.cancel()
            run.probe_task = None
        run.probe_failures = 0
        run.probe_passed = None
        if collector.config.health_check is not None:
            run.probe_task = asyncio.ensure_future(self._probe_loop(collector, run))

    async def _probe_loop(self, collector: _Collector, run: _Run) -> None:
        watcher = self._ensure_started()
        while not run.exited.done():
            check = collector.config.health_check
            if check is None:
                return
            interval = check.interval_seconds or self.config.health_check_interval_seconds
            await asyncio.sleep(interval)
            if collector.state != CollectorState.RUNNING or collector.run is not run:
                continue
            result = await run_probe(
                check, env=run.env, cwd=collector.config.working_dir, watcher=watcher
            )
            if result.ok:
                if run.probe_failures:
                    self._emit(collector, "probe", f"health probe passes again: {result.detail}")
                run.probe_failures, run.probe_passed = 0, True
                continue
            run.probe_failures += 1
            run.probe_passed = False
            self._emit(
                collector,
                "probe",
                f"health probe failed ({run.probe_failures}/{check.failure_threshold}): "
                f"{result.detail}",
            )
            if run.probe_failures >= check.failure_threshold:
                self._spawn_task(
                    self._handle_unhealthy(collector, run, result.detail),
                    name=f"unhealthy {collector.collector_id}",
                )
                return

    async def _handle_unhealthy(self, collector: _Collector, run: _Run, detail: str) -> None:
        policy = RestartPolicy.resolve(collector.config, self.config)
        if not policy.auto_restart:
            return
        async with collector.lock:
            if collector.run is not run or collector.state != CollectorState.RUNNING:
                return
            description = f"unhealthy: {detail}"
            collector.last_error = description
            self._emit(collector, "unhealthy", f"{description}; restarting")
            await self._stop_locked(collector, graceful=True, timeout=None)
            await self._after_unexpected_end(
                collector, run_seconds=now() - run.started_at, description=description, clean=False
            )

    def _health(self, collector: _Collector) -> HealthStatus:
        state, run = collector.state, collector.run
        check = collector.config.health_check
        if state == CollectorState.FAILED:
            return HealthStatus.UNHEALTHY
        if run is not None and check is not None and run.probe_failures >= check.failure_threshold:
            return HealthStatus.UNHEALTHY
        if state in TRANSITIONAL_STATES:
            return HealthStatus.DEGRADED
        if state.value != collector.desired.value:
            return HealthStatus.DEGRADED
        if state in PROCESS_STATES and run is not None:
            # The pidfd is the kernel's word on liveness: no /proc read needed.
            if run.exited.done():
                return HealthStatus.DEGRADED
            if check is not None and state == CollectorState.RUNNING:
                if run.probe_failures > 0:
                    return HealthStatus.DEGRADED
                if run.probe_passed is None:
                    return HealthStatus.UNKNOWN
        return HealthStatus.HEALTHY


def _spawn_identified(
    request: spawn.LaunchRequest,
) -> tuple[subprocess.Popen[bytes] | None, int | None]:
    popen = spawn.try_spawn(request)
    return popen, process_start_ticks(popen.pid) if popen is not None else None


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks since boot.

    With the pid it identifies one process for the life of the machine, so a
    recycled pid is never mistaken for the collector that once had it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _kernel_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, D, T, Z, ...), ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: the state follows the last ')'.
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


def _require_job_control() -> None:
    if not hasattr(signal, "SIGSTOP") or not hasattr(os, "killpg"):
        raise PlatformNotSupported("pause and resume need POSIX job-control signals")
