"""What the executor knows of each collector: one mutable record, and the views of it.

A record holds the facts — the current run, the spec applied, the last end
nobody asked for, restart counts, probe results — and nothing decided: the
planner reads them as an immutable ``Observed`` (``observe``), people and
metrics as a ``CollectorStatus`` (``status``). Used by the executor only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from reconciler.plan.health import HealthFacts, health
from reconciler.plan.planner import Desired, Exit, Observed
from reconciler.plan.rollout import Rejected, Rollout
from reconciler.process.driver import Run
from reconciler.spec.models import CollectorConfig, CollectorSpec
from reconciler.state import (
    CollectorState,
    CollectorStatus,
    DesiredState,
    HealthStatus,
)


@dataclass(frozen=True, slots=True)
class Applied:
    """The spec a collector's process was last started or updated with, and its hashes."""

    spec: CollectorSpec
    spec_hash: str
    process_hash: str


@dataclass(eq=False, slots=True)
class CollectorRecord:
    collector_id: str
    collector_type: str
    config: CollectorConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: CollectorState = CollectorState.STOPPED
    desired: DesiredState = DesiredState.RUNNING
    run: Run | None = None
    applied: Applied | None = None
    restart_count: int = 0
    consecutive_restarts: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    last_error_code: str | None = None
    exit: Exit | None = None
    gave_up: bool = False
    backoff_until: float | None = None
    stop_task: asyncio.Future[int | None] | None = None
    escalate: asyncio.Event | None = None
    """Set to SIGKILL at once the graceful stop under way; made by each stop (an
    ``asyncio.Event`` is 0.7 KiB, and most records are never stopped)."""
    probe_task: asyncio.Task[None] | None = None
    probe_failures: int = 0
    probe_passed: bool | None = None
    probe_detail: str = ""
    ready_task: asyncio.Task[None] | None = None
    ready_probe_run: Run | None = None
    """The run whose ``ready_check`` passed."""
    ready_detail: str = ""
    """The ready_check's last result while it has not passed."""
    ready_run: Run | None = None
    """The run a ``Ready`` was recorded for: the collector is ready while it is ``run``."""
    good: Desired | None = None
    """The last spec it was ready with (what a rollback goes back to)."""
    rollout: Rollout | None = None
    rejected: Rejected | None = None
    generation: int = 0
    """Bumped on every change: an action planned from an older generation is stale."""
    _health_facts: tuple[object, ...] = ()
    _health: HealthStatus = HealthStatus.UNKNOWN

    def changed(self) -> None:
        self.generation += 1

    def error(self, message: str, code: str | None = None) -> None:
        """Record the last error, with its DESIGN §5 code where it has one."""
        self.last_error, self.last_error_code = message, code

    def observe(self) -> Observed:
        applied = self.applied
        return Observed(
            state=self.state,
            applied=applied.spec if applied is not None else None,
            applied_spec_hash=applied.spec_hash if applied is not None else None,
            applied_process_hash=applied.process_hash if applied is not None else None,
            exit=self.exit,
            consecutive_restarts=self.consecutive_restarts,
            probe_failures=self.probe_failures,
            probe_detail=self.probe_detail,
            gave_up=self.gave_up,
            started_at=self.run.started_at if self.run is not None else None,
            ready=self.ready,
            ready_probe_passed=self.run is not None and self.ready_probe_run is self.run,
            good=self.good,
            rollout=self.rollout,
            rejected=self.rejected,
            last_error=self.last_error,
        )

    @property
    def applied_spec_hash(self) -> str | None:
        return self.applied.spec_hash if self.applied is not None else None

    @property
    def ready(self) -> bool:
        """Its current process is ready (§4)."""
        return self.run is not None and self.ready_run is self.run

    def health(self) -> HealthStatus:
        """DESIGN §4, decided by ``reconciler.plan.health`` from this record's facts.

        Asked for every collector at every scrape: decided again only when a fact changed.
        """
        run, check = self.run, self.config.health_check
        facts = (
            self.state,
            self.desired,
            run is not None,
            run is not None and run.exited.done(),
            self.exit is not None,
            check.failure_threshold if check is not None else None,
            self.probe_failures,
            self.probe_passed,
        )
        if facts != self._health_facts:
            self._health_facts = facts
            self._health = health(HealthFacts(*facts))
        return self._health

    def backoff_seconds(self, now: float) -> float:
        """Delay left before the next automatic restart (0 when none is pending)."""
        if self.state == CollectorState.BACKOFF and self.backoff_until is not None:
            return max(0.0, self.backoff_until - now)
        return 0.0

    def status(self, now: float) -> CollectorStatus:
        run = self.run
        return CollectorStatus(
            collector_id=self.collector_id,
            collector_type=self.collector_type,
            state=self.state,
            desired=self.desired,
            health=self.health(),
            pid=run.pid if run is not None else None,
            start_time=run.started_wall if run is not None else None,
            uptime_seconds=now - run.started_at if run is not None else 0.0,
            restart_count=self.restart_count,
            consecutive_restarts=self.consecutive_restarts,
            last_exit_code=self.last_exit_code,
            last_error=self.last_error,
            last_error_code=self.last_error_code,
            backoff_seconds=self.backoff_seconds(now),
            probe_failures=self.probe_failures if run is not None else 0,
        )


class ObservedMap(Mapping[str, Observed]):
    """Every collector's ``Observed``, each made when first asked for (a pass reads a few)."""

    def __init__(self, records: Mapping[str, CollectorRecord]) -> None:
        self._records = records
        self._made: dict[str, Observed] = {}

    def __getitem__(self, collector_id: str) -> Observed:
        made = self._made.get(collector_id)
        if made is None:
            made = self._made[collector_id] = self._records[collector_id].observe()
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, collector_id: object) -> bool:
        return collector_id in self._records
