"""``FakeDriver``: a ``ProcessDriver`` that starts nothing, for tests of the loop and of embedders.

Shipped in the package (as httpx ships ``MockTransport``) so that code built on
``CollectorProcessManager`` or the reconcile loop can test its own behaviour
without processes or real time. Pair it with ``ManualClock``::

    clock = ManualClock()
    driver = FakeDriver(clock=clock)
    manager = CollectorProcessManager(config, driver=driver)
    await manager.start_collector("web", "web", CollectorConfig())
    driver.exit("web", code=1)          # a crash
    await clock.advance(1.0)            # backoff passes in no real time

Scripting: ``exit(id, code)`` ends the current run; ``fail_spawns(id, n)`` makes
the next ``n`` starts fail with ``SPAWN_FAILED``; ``probe_results(id, ...)``
queues probe outcomes (the default passes); ``ignore_stop_signal(id)`` makes a
collector sit out its stop signal until SIGKILL. ``effects`` lists what the
driver was asked to do, in order, for assertions.
"""

from __future__ import annotations

import asyncio
import signal as signals
from collections import deque
from collections.abc import Mapping, Sequence

from reconciler.errors import ProcessNotFound, SpawnFailed
from reconciler.process.clock import Clock, ManualClock
from reconciler.process.driver import Launch, ProbeResult, Run, RunIdentity
from reconciler.spec.models import CollectorConfig, Probe, ReadyCheck

_JOB_CONTROL = (signals.SIGSTOP, signals.SIGCONT, 0)


class FakeDriver:
    """Scripted process effects; see the module docstring."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else ManualClock()
        self.effects: list[str] = []
        """``spawn web``, ``signal web SIGTERM``, ``kill web``, ``probe web``, in order."""
        self.runs: dict[str, Run] = {}
        """Each collector's current (or last) run."""
        self.spawned: dict[str, int] = {}
        """How many processes were started per collector."""
        self.adoptable: dict[int, str] = {}
        """pid -> collector id of processes an earlier reconciler "left running"."""
        self._owner: dict[int, str] = {}
        self._stopped: set[int] = set()
        self._spawn_failures: dict[str, deque[str]] = {}
        self._probes: dict[str, deque[ProbeResult]] = {}
        self._ready_probes: dict[str, deque[ProbeResult]] = {}
        self._ready_then: dict[str, bool] = {}
        self._ignores_stop: set[str] = set()
        self._next_pid = 40000

    @property
    def cgroup_tracking(self) -> bool:
        return False

    # -- scripting ---------------------------------------------------------------

    def exit(self, collector_id: str, code: int | None = 1) -> None:
        """End the collector's current run as if it exited with ``code`` (negative: a signal)."""
        run = self.runs[collector_id]
        if not run.exited.done():
            run.exited.set_result(code)

    def fail_spawns(self, collector_id: str, count: int = 1, message: str = "not found") -> None:
        self._spawn_failures.setdefault(collector_id, deque()).extend([message] * count)

    def probe_results(self, collector_id: str, *results: bool) -> None:
        queue = self._probes.setdefault(collector_id, deque())
        queue.extend(
            ProbeResult(ok, "fake probe " + ("passes" if ok else "fails")) for ok in results
        )

    def ready_results(self, collector_id: str, *results: bool, then: bool = True) -> None:
        """What the collector's ``ready_check`` answers, in order; ``then`` once they run out."""
        queue = self._ready_probes.setdefault(collector_id, deque())
        queue.extend(
            ProbeResult(ok, "fake ready_check " + ("passes" if ok else "fails")) for ok in results
        )
        self._ready_then[collector_id] = then

    def ignore_stop_signal(self, collector_id: str) -> None:
        self._ignores_stop.add(collector_id)

    def alive(self, collector_id: str) -> bool:
        run = self.runs.get(collector_id)
        return run is not None and not run.exited.done()

    # -- ProcessDriver -----------------------------------------------------------

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def spawn(self, launch: Launch) -> Run:
        collector_id = launch.collector_id
        self.effects.append(f"spawn {collector_id}")
        failures = self._spawn_failures.get(collector_id)
        if failures:
            raise SpawnFailed(f"binary for {collector_id!r}: {failures.popleft()}")
        self._next_pid += 1
        run = Run(
            pid=self._next_pid,
            started_at=self.clock.now(),
            started_wall=self.clock.now(),
            exited=asyncio.get_running_loop().create_future(),
            env=dict(launch.config.env),
            start_ticks=self._next_pid,
        )
        self.runs[collector_id] = run
        self._owner[run.pid] = collector_id
        self.spawned[collector_id] = self.spawned.get(collector_id, 0) + 1
        return run

    async def adopt(self, collector_id: str, config: CollectorConfig, identity: RunIdentity) -> Run:
        if self.adoptable.get(identity.pid) != collector_id:
            raise ProcessNotFound(f"pid {identity.pid} of collector {collector_id!r} is gone")
        self.effects.append(f"adopt {collector_id}")
        run = Run(
            pid=identity.pid,
            started_at=self.clock.now(),
            started_wall=identity.started_wall,
            exited=asyncio.get_running_loop().create_future(),
            start_ticks=identity.start_ticks,
            adopted=True,
        )
        self.runs[collector_id] = run
        self._owner[run.pid] = collector_id
        return run

    def signal(self, run: Run, signum: int, *, whole_tree: bool = False) -> None:
        collector_id = self._owner.get(run.pid, "?")
        self.effects.append(f"signal {collector_id} {signals.Signals(signum).name}")
        if signum == signals.SIGSTOP:
            self._stopped.add(run.pid)
        elif signum == signals.SIGCONT:
            self._stopped.discard(run.pid)
        elif signum == signals.SIGKILL or collector_id not in self._ignores_stop:
            self._end(run, -signum)

    def kill(self, run: Run) -> None:
        run.killed = True
        self.effects.append(f"kill {self._owner.get(run.pid, '?')}")
        self._end(run, -signals.SIGKILL)

    def _end(self, run: Run, code: int) -> None:
        # As the kernel does: the exit is noticed on a later turn of the loop.
        def resolve() -> None:
            if not run.exited.done():
                run.exited.set_result(code)

        asyncio.get_running_loop().call_soon(resolve)

    async def kill_leftovers(self, run: Run, *, within_seconds: float) -> None:
        return None

    async def confirm_job_state(self, run: Run, *, stopped: bool) -> None:
        return None

    def is_stopped(self, run: Run) -> bool:
        return run.pid in self._stopped

    async def probe(self, run: Run, check: Probe, *, cwd: str | None) -> ProbeResult:
        collector_id = self._owner.get(run.pid, "?")
        if isinstance(check, ReadyCheck):
            self.effects.append(f"ready_check {collector_id}")
            ready = self._ready_probes.get(collector_id)
            if ready:
                return ready.popleft()
            then = self._ready_then.get(collector_id, True)
            return ProbeResult(then, "fake ready_check " + ("passes" if then else "fails"))
        self.effects.append(f"probe {collector_id}")
        queue = self._probes.get(collector_id)
        if queue:
            return queue.popleft()
        return ProbeResult(True, "fake probe passes")

    def release(self, run: Run) -> None:
        return None

    def tree_pids(self, run: Run) -> list[int]:
        return [] if run.exited.done() else [run.pid]

    def all_tree_pids(self, runs: Mapping[str, Run]) -> dict[str, list[int]]:
        return {cid: self.tree_pids(run) for cid, run in runs.items()}

    async def sweep_stale(self, owned: Sequence[Run]) -> list[int]:
        return []
