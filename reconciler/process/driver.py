"""The process-driver seam: every effect on a collector's processes, and nothing else.

A ``ProcessDriver`` spawns a collector, signals or kills its whole tree, tells
when its main process exits (``Run.exited``), runs its health probe, adopts a
process an earlier reconciler left running, and lists the pids of a tree. It
makes no decision: when to restart, how long to back off, when to give up and
what a failed probe means are ``reconciler.plan``'s; the order of a stop
(signal, wait, SIGKILL, wait) is the executor's. So the reconcile loop and the
library façade run the same way on the real driver (``PosixDriver``) and on
``FakeDriver``, which ships next to it for tests — the loop's own and an
embedder's — as httpx ships ``MockTransport`` beside its real transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.process.clock import Clock
from reconciler.spec.models import CollectorConfig, Probe


@dataclass(frozen=True, slots=True)
class Launch:
    """What to start: one collector's process."""

    collector_id: str
    collector_type: str
    config: CollectorConfig


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One health probe's outcome, with the words an operator reads."""

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """A running collector process, as recorded in the state file for adoption."""

    pid: int
    start_ticks: int
    started_wall: float
    cgroup_path: Path | None


@dataclass(eq=False)
class Run:
    """One process of a collector, from spawn (or adoption) to exit.

    ``exited`` is resolved by the driver with the exit code (negative: the
    killing signal; ``None``: unknown, for an adopted process) once the
    process is gone and reaped.
    """

    pid: int
    started_at: float
    """Clock time of the start (``Clock.now()``), for uptimes and run lengths."""
    started_wall: float
    """Unix time of the start, for people and metrics."""
    exited: asyncio.Future[int | None]
    env: dict[str, str] = field(default_factory=dict)
    """The environment it was started with: an exec probe gets the same."""
    start_ticks: int | None = None
    """Kernel start time: with the pid, its identity across reconciler restarts."""
    cgroup_path: Path | None = None
    adopted: bool = False
    stop_requested: bool = False
    """Its end was asked for: not a crash."""
    killed: bool = False
    """Its stop had to SIGKILL."""

    def identity(self) -> RunIdentity | None:
        if self.start_ticks is None or self.exited.done():
            return None
        return RunIdentity(self.pid, self.start_ticks, self.started_wall, self.cgroup_path)


class ProcessDriver(Protocol):
    """Effects on collector processes; implemented by ``PosixDriver`` and ``FakeDriver``."""

    clock: Clock

    @property
    def cgroup_tracking(self) -> bool:
        """Whether each run gets a cgroup of its own (exact tree tracking)."""

    async def open(self) -> None:
        """Acquire what spawning needs (exit watcher, cgroup tree, threads). Idempotent."""

    async def close(self) -> None:
        """Release it all; runs still alive are not touched."""

    async def spawn(self, launch: Launch) -> Run:
        """Start the process; ``SpawnFailed`` when it cannot be."""

    async def adopt(self, collector_id: str, config: CollectorConfig, identity: RunIdentity) -> Run:
        """Watch a process an earlier reconciler started; ``ProcessNotFound`` if gone."""

    def signal(self, run: Run, signum: int, *, whole_tree: bool = False) -> None:
        """Send ``signum`` to the run's process group, or to every process of its tree."""

    def kill(self, run: Run) -> None:
        """SIGKILL every process of the run's tree."""

    async def kill_leftovers(self, run: Run, *, within_seconds: float) -> None:
        """After the main process exited, SIGKILL what remains; ``TerminateFailed`` if any stays."""

    async def confirm_job_state(self, run: Run, *, stopped: bool) -> None:
        """Wait until every process of the tree is stopped (or running again)."""

    def is_stopped(self, run: Run) -> bool:
        """Whether the run's main process is stopped by job control (for adoption)."""

    async def probe(self, run: Run, check: Probe, *, cwd: str | None) -> ProbeResult:
        """Run the health check once against this run."""

    def release(self, run: Run) -> None:
        """Free what the run held (its cgroup) once it and its tree are gone."""

    def tree_pids(self, run: Run) -> list[int]:
        """Every live pid of the run's tree."""

    def all_tree_pids(self, runs: Mapping[str, Run]) -> dict[str, list[int]]:
        """``tree_pids`` of many runs in one sweep."""

    async def sweep_stale(self, owned: Sequence[Run]) -> list[int]:
        """Kill what an earlier reconciler left that no live run owns; their pids.

        With cgroups: processes in run cgroups of no owned run. Without: processes
        carrying this driver's instance mark whose session is no owned run's.
        """
