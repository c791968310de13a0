"""``PosixDriver``: the real ``ProcessDriver`` — fork/exec, cgroups, pidfds and signals.

Each run gets its own session (so its own process group) and, where the
kernel allows, a cgroup v2 of its own, so setsid and double-fork escapees are
still found and killed. Exits are seen through a pidfd per child in the event
loop's epoll: no polling, no thread per collector. Fork/exec and cgroup
set-up run in a fixed pool of threads, so the loop never blocks on them.
As a child subreaper the driver also inherits and reaps its collectors'
orphans. Decides nothing: the executor and the planner tell it what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reconciler.errors import InvalidState, Io, ProcessNotFound, SpawnFailed, TerminateFailed
from reconciler.errors import Timeout as TimeoutError_
from reconciler.process import spawn as child
from reconciler.process.binary import resolve_binary
from reconciler.process.cgroup import CgroupTree, RunCgroup
from reconciler.process.clock import Clock
from reconciler.process.driver import Launch, ProbeResult, Run, RunIdentity
from reconciler.process.exits import ExitWatcher, set_child_subreaper
from reconciler.process.health import run_probe
from reconciler.process.tree import (
    group_members,
    kernel_state,
    members_by_leader,
    pids_with_env,
    process_start_ticks,
    session_and_group,
)
from reconciler.spec.models import CollectorConfig, Probe, ResourceLimits

log = logging.getLogger("reconciler.process")

SPAWN_RETRY_SECONDS = 0.01
SPAWN_THREADS = 4
"""Fork/exec blocks until the child has exec'd, and cgroup set-up (mkdir, open,
the child's join) takes kernel-wide locks for milliseconds: a small fixed pool
keeps all of that off the event loop and lets concurrent starts overlap. The
thread count stays constant."""
STATE_CONFIRM_SECONDS = 2.0
ESCAPEE_SETTLE_SECONDS = 0.002


class PosixDriver:
    """Spawns and signals real processes (Linux: pidfd, cgroup v2, subreaper).

    ``log_dir``: where ``log = "file"`` collectors write ``<id>.log``.
    ``child_subreaper``: inherit, and reap, collectors' orphans (then every
    exited child of this process that the driver did not start is reaped too,
    so leave it off when embedding in a program that waits for children of its
    own). ``cgroups``: a cgroup v2 per run where possible. ``cgroup_delegated``:
    this process owns its cgroup (systemd ``Delegate=yes``) and may move itself
    into a leaf so that memory, pids and cpu limits are enforced by cgroup.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        child_subreaper: bool = False,
        cgroups: bool = True,
        cgroup_name: str | None = None,
        cgroup_delegated: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.log_dir = log_dir
        self.collector_binaries: Mapping[str, str] = {}
        """``[process_manager.collector_binaries]``, kept current by the manager."""
        self._child_subreaper = child_subreaper
        self._want_cgroups = cgroups
        self._cgroup_name = cgroup_name
        self._instance = cgroup_name
        self._cgroup_delegated = cgroup_delegated
        self._tree: CgroupTree | None = None
        self._watcher: ExitWatcher | None = None
        self._spawner: ThreadPoolExecutor | None = None
        self._run_cgroups: dict[int, RunCgroup] = {}

    @property
    def cgroup_tracking(self) -> bool:
        return self._tree is not None

    @property
    def watcher(self) -> ExitWatcher:
        if self._watcher is None:
            raise InvalidState("the process driver is not open")
        return self._watcher

    async def open(self) -> None:
        if self._watcher is not None:
            return
        if self._child_subreaper and not set_child_subreaper(True):
            log.warning("cannot become a child subreaper; orphaned descendants go to init")
        self._watcher = ExitWatcher(asyncio.get_running_loop(), reap_orphans=self._child_subreaper)
        self._tree = (
            CgroupTree.detect(self._cgroup_name, move_self_to_leaf=self._cgroup_delegated)
            if self._want_cgroups
            else None
        )
        self._spawner = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="spawn")
        log.debug(
            "process tracking: %s", f"cgroup {self._tree.path}" if self._tree else "process groups"
        )

    async def close(self) -> None:
        if self._tree is not None:
            self._tree.remove()
            self._tree = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
            if self._child_subreaper:
                set_child_subreaper(False)
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None

    # -- starting -----------------------------------------------------------------

    async def spawn(self, launch: Launch) -> Run:
        await self.open()
        watcher = self.watcher
        config, collector_id = launch.config, launch.collector_id
        argv0 = resolve_binary(
            collector_type=launch.collector_type,
            binary_path=config.binary_path,
            collector_binaries=self.collector_binaries,
            search_path=os.environ.get("PATH"),
        )
        child.check_launchable(config)
        identity = child.resolve_identity(config.user, config.group)
        env = child.build_env(
            collector_id=collector_id,
            spec_env=config.env,
            identity=identity,
            parent_env=os.environ,
            instance=self._instance,
        )
        limits = config.resource_limits

        def request_for(cgroup: RunCgroup | None, enforced: set[str]) -> child.LaunchRequest:
            return child.LaunchRequest(
                collector_id=collector_id,
                argv=[argv0, *config.args],
                env=env,
                working_dir=config.working_dir,
                identity=identity,
                rlimits=child.rlimits_for(limits, enforced_by_cgroup=enforced),
                cgroup_procs=str(cgroup.path / "cgroup.procs") if cgroup is not None else None,
                log_mode=config.log,
                log_path=(
                    self.log_dir / f"{collector_id}.log" if self.log_dir is not None else None
                ),
            )

        with watcher.spawning():
            # One trip to a spawn thread for the cgroup (mkdir and open in cgroupfs take
            # the kernel's cgroup locks) and the fork/exec: each trip costs the loop too.
            cgroup, enforced, request, spawned = await asyncio.get_running_loop().run_in_executor(
                self._spawner, self._prepare_and_spawn, collector_id, limits, request_for
            )
            try:
                if spawned is None:  # text file busy: the binary is still being written
                    spawned = await self._fork_exec_again(request)
                popen, start_ticks = spawned
                run = Run(
                    pid=popen.pid,
                    started_at=self.clock.now(),
                    started_wall=time.time(),
                    exited=asyncio.get_running_loop().create_future(),
                    env=env,
                    start_ticks=start_ticks,
                    cgroup_path=cgroup.path if cgroup is not None else None,
                )
                if cgroup is not None:
                    self._run_cgroups[run.pid] = cgroup
                watcher.watch(popen, lambda code: _resolve(run, code))
            except BaseException:
                if cgroup is not None:
                    cgroup.remove()
                raise
        if limits is not None and limits.cpu_max_percent is not None:
            if "cpu_max_percent" not in enforced:
                log.warning(
                    "%s: cpu_max_percent needs the cgroup v2 cpu controller, which is not "
                    "available here; not enforced",
                    collector_id,
                )
        return run

    def _prepare_and_spawn(
        self,
        collector_id: str,
        limits: ResourceLimits | None,
        request_for: Callable[[RunCgroup | None, set[str]], child.LaunchRequest],
    ) -> tuple[
        RunCgroup | None,
        set[str],
        child.LaunchRequest,
        tuple[subprocess.Popen[bytes], int | None] | None,
    ]:
        """In a spawn thread: the run's cgroup, then the first fork/exec (``None``: busy)."""
        cgroup, enforced = self._prepare_cgroup(collector_id, limits)
        request = request_for(cgroup, enforced)
        try:
            popen, start_ticks = _spawn_identified(request)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        return cgroup, enforced, request, (popen, start_ticks) if popen is not None else None

    async def _fork_exec_again(
        self, request: child.LaunchRequest
    ) -> tuple[subprocess.Popen[bytes], int | None]:
        """After a first try that found the binary busy: retry shortly, a few times."""
        loop = asyncio.get_running_loop()
        for _ in range(child.ETXTBSY_RETRIES - 1):
            await asyncio.sleep(SPAWN_RETRY_SECONDS)
            popen, start_ticks = await loop.run_in_executor(
                self._spawner, _spawn_identified, request
            )
            if popen is not None:
                return popen, start_ticks
        raise SpawnFailed(f"cannot start {request.argv[0]}: text file busy (still being written)")

    def _prepare_cgroup(
        self, collector_id: str, limits: ResourceLimits | None
    ) -> tuple[RunCgroup | None, set[str]]:
        """Create the run's cgroup and write its limits; the child joins it on its way in.

        Runs in a spawn thread: cgroupfs operations take kernel-wide locks.
        """
        if self._tree is None:
            return None, set()
        try:
            cgroup = self._tree.create(collector_id)
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
            return cgroup, enforced
        except OSError as exc:
            cgroup.remove()
            raise SpawnFailed(f"cannot set up the cgroup of {collector_id!r}: {exc}") from exc

    async def adopt(self, collector_id: str, config: CollectorConfig, identity: RunIdentity) -> Run:
        await self.open()
        pid = identity.pid
        if process_start_ticks(pid) != identity.start_ticks or kernel_state(pid) in (
            None,
            "Z",
            "X",
        ):
            raise ProcessNotFound(f"pid {pid} of collector {collector_id!r} is no longer running")
        cgroup_path = identity.cgroup_path
        run = Run(
            pid=pid,
            started_at=self.clock.now() - max(0.0, time.time() - identity.started_wall),
            started_wall=identity.started_wall,
            exited=asyncio.get_running_loop().create_future(),
            env=child.build_env(
                collector_id=collector_id, spec_env=config.env, identity=None, parent_env=os.environ
            ),
            start_ticks=identity.start_ticks,
            adopted=True,
        )
        if cgroup_path is not None and (cgroup_path / "cgroup.procs").exists():
            self._run_cgroups[pid] = RunCgroup(path=cgroup_path, controllers=frozenset())
            run.cgroup_path = cgroup_path
        try:
            self.watcher.watch_pid(pid, lambda code: _resolve(run, code))
        except ProcessLookupError:
            self._run_cgroups.pop(pid, None)
            raise ProcessNotFound(f"pid {pid} of collector {collector_id!r} exited") from None
        return run

    def is_stopped(self, run: Run) -> bool:
        return kernel_state(run.pid) in ("T", "t")

    # -- signals and the process tree ---------------------------------------------

    def signal(self, run: Run, signum: int, *, whole_tree: bool = False) -> None:
        try:
            os.killpg(run.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise Io(f"cannot signal process group {run.pid}: {exc.strerror}") from exc
        if whole_tree:
            for pid in self.tree_pids(run):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def kill(self, run: Run) -> None:
        run.killed = True
        cgroup = self._run_cgroups.get(run.pid)
        if cgroup is not None:
            cgroup.kill()
        self.signal(run, signal.SIGKILL, whole_tree=True)

    async def kill_leftovers(self, run: Run, *, within_seconds: float) -> None:
        deadline = self.clock.now() + within_seconds
        cgroup = self._run_cgroups.get(run.pid)
        while members := self.tree_pids(run):
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if cgroup is not None:
                cgroup.kill()
            if self.clock.now() >= deadline:
                raise TerminateFailed(
                    f"processes {members} of pid {run.pid} survive SIGKILL for {within_seconds:g} s"
                )
            # Killed processes leave the tree within microseconds; the kernel
            # offers no portable notification for that, so look again shortly.
            await asyncio.sleep(ESCAPEE_SETTLE_SECONDS)

    async def confirm_job_state(self, run: Run, *, stopped: bool) -> None:
        deadline = self.clock.now() + STATE_CONFIRM_SECONDS
        while True:
            if run.exited.done() or kernel_state(run.pid) is None:
                raise InvalidState(f"pid {run.pid} exited before it could be confirmed")
            states = {pid: kernel_state(pid) for pid in {run.pid, *self.tree_pids(run)}}
            pending = {
                pid: state
                for pid, state in states.items()
                if state is not None and state not in "ZX" and (state in "Tt") != stopped
            }
            if not pending:
                return
            if self.clock.now() >= deadline:
                raise TimeoutError_(
                    f"processes {sorted(pending)} did not {'stop' if stopped else 'continue'} "
                    f"within {STATE_CONFIRM_SECONDS:g} s"
                )
            # The kernel does not notify a non-waiting parent of SIGSTOP/SIGCONT.
            await asyncio.sleep(0.001)

    def release(self, run: Run) -> None:
        cgroup = self._run_cgroups.pop(run.pid, None)
        if cgroup is not None and not cgroup.remove():
            log.debug("cgroup %s not yet empty; left for shutdown", cgroup.path)

    def tree_pids(self, run: Run) -> list[int]:
        cgroup = self._run_cgroups.get(run.pid)
        if cgroup is not None:
            return cgroup.pids()
        return group_members(run.pid)

    def all_tree_pids(self, runs: Mapping[str, Run]) -> dict[str, list[int]]:
        """With cgroups, one ``cgroup.procs`` read per run; without, one process-table scan."""
        if self._tree is not None:
            cgroups = self._run_cgroups
            return {
                cid: cgroups[run.pid].pids() if run.pid in cgroups else [run.pid]
                for cid, run in runs.items()
            }
        by_leader = members_by_leader({run.pid for run in runs.values()})
        return {cid: by_leader[run.pid] for cid, run in runs.items()}

    async def sweep_stale(self, owned: Sequence[Run]) -> list[int]:
        await self.open()
        if self._tree is None:
            return await self._sweep_marked(owned)
        owned_paths = {run.cgroup_path for run in owned if run.cgroup_path is not None}
        killed: list[int] = []
        for stale in self._tree.children():
            if stale.path in owned_paths:
                continue
            pids = stale.pids()
            if pids:
                stale.kill()
                killed.extend(pids)
                deadline = self.clock.now() + 5.0
                while stale.pids() and self.clock.now() < deadline:
                    await asyncio.sleep(ESCAPEE_SETTLE_SECONDS)
            stale.remove()
        return killed

    async def _sweep_marked(self, owned: Sequence[Run]) -> list[int]:
        """Without cgroups: kill marked processes outside every owned run's session."""
        if self._instance is None:
            return []
        leaders = {run.pid for run in owned}
        mark = f"{child.INSTANCE_ENV}={self._instance}".encode()
        stale = [
            pid
            for pid in pids_with_env(mark)
            if pid != os.getpid() and not leaders & {pid, *session_and_group(pid)}
        ]
        for pid in stale:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = self.clock.now() + 5.0
        while any(kernel_state(pid) not in (None, "Z", "X") for pid in stale):
            if self.clock.now() >= deadline:
                break
            await asyncio.sleep(ESCAPEE_SETTLE_SECONDS)
        return stale

    # -- probes -------------------------------------------------------------------

    async def probe(self, run: Run, check: Probe, *, cwd: str | None) -> ProbeResult:
        return await run_probe(check, env=run.env, cwd=cwd, watcher=self.watcher)


def _resolve(run: Run, code: int | None) -> None:
    if not run.exited.done():
        run.exited.set_result(code)


def _spawn_identified(
    request: child.LaunchRequest,
) -> tuple[subprocess.Popen[bytes] | None, int | None]:
    popen = child.try_spawn(request)
    return popen, process_start_ticks(popen.pid) if popen is not None else None
