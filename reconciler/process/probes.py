"""The probe loops of each run: liveness (``health_check``) and readiness (``ready_check``).

They only record what they see on the collector's record and emit an event
when it changes; what follows (a restart at the failure threshold, ``Ready``)
is the planner's. Mixed into ``Executor``, which starts them with each run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from reconciler.process.driver import ProcessDriver, Run
from reconciler.process.records import CollectorRecord
from reconciler.spec.models import ProcessManagerConfig
from reconciler.state import CollectorState

if TYPE_CHECKING:
    from reconciler.process.clock import Clock


class ProbeLoops:
    """Needs the executor's ``driver``, ``clock``, ``config`` and ``emit``."""

    driver: ProcessDriver
    clock: Clock
    config: ProcessManagerConfig

    def emit(self, record: CollectorRecord, kind: str, message: str) -> None:
        raise NotImplementedError

    def restart_probe(self, record: CollectorRecord, run: Run) -> None:
        if record.probe_task is not None:
            record.probe_task.cancel()
            record.probe_task = None
        record.probe_failures = 0
        record.probe_passed = None
        record.probe_detail = ""
        if record.config.health_check is not None:
            record.probe_task = asyncio.ensure_future(self._probe_loop(record, run))

    async def _probe_loop(self, record: CollectorRecord, run: Run) -> None:
        """Probe every interval; the counts go to the record, the decision to the planner."""
        while not run.exited.done():
            check = record.config.health_check
            if check is None:
                return
            interval = check.interval_seconds or self.config.health_check_interval_seconds
            await self.clock.sleep(interval)
            if record.state != CollectorState.RUNNING or record.run is not run:
                continue
            result = await self.driver.probe(run, check, cwd=record.config.working_dir)
            if record.run is not run:
                return
            if result.ok:
                was_failing = record.probe_failures > 0
                record.probe_failures, record.probe_passed = 0, True
                record.probe_detail = result.detail
                if was_failing:
                    self.emit(record, "probe", f"health probe passes again: {result.detail}")
                continue
            record.probe_failures += 1
            record.probe_passed = False
            record.probe_detail = result.detail
            self.emit(
                record,
                "probe",
                f"health probe failed ({record.probe_failures}/{check.failure_threshold}): "
                f"{result.detail}",
            )

    def restart_ready_probe(self, record: CollectorRecord, run: Run) -> None:
        """Probe the ``ready_check`` of a new process until it passes once."""
        if record.ready_task is not None:
            record.ready_task.cancel()
            record.ready_task = None
        record.ready_detail = ""
        if record.config.ready_check is not None:
            record.ready_task = asyncio.ensure_future(self._ready_loop(record, run))

    async def _ready_loop(self, record: CollectorRecord, run: Run) -> None:
        while not run.exited.done() and record.run is run:
            check = record.config.ready_check
            if check is None:
                return
            result = await self.driver.probe(run, check, cwd=record.config.working_dir)
            if record.run is not run:
                return
            if result.ok:
                record.ready_probe_run = run
                record.ready_detail = result.detail
                self.emit(record, "probe", f"ready_check passed: {result.detail}")
                return
            record.ready_detail = result.detail
            await self.clock.sleep(check.interval_seconds)
