"""What the reconciler says of each collector: the views of status, the API and metrics.

``Views`` is mixed into ``reconciler.loop.Reconciler``: it reads the spec
snapshot, the process records, the controller's holds and the overrides, and
plans nothing. ``views()`` builds one ``CollectorView`` per collector (status
and the API); ``exported()`` builds the tuple the metrics exporter reads at
every scrape, the same facts without the objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.errors import ProcessNotFound
from reconciler.plan.planner import Desired, Override, converged, effective_state
from reconciler.plan.rollout import Rejected
from reconciler.process import CollectorProcessManager
from reconciler.process.controller import Controller
from reconciler.process.records import CollectorRecord
from reconciler.source import SpecSnapshot
from reconciler.spec.models import CollectorSpec
from reconciler.state import CollectorState, CollectorStatus, DesiredState, HealthStatus

__all__ = ["CollectorView", "ExportedCollector", "Views"]


@dataclass(frozen=True, slots=True)
class CollectorView:
    """Everything known about one collector, for status, metrics and the API."""

    collector_id: str
    collector_type: str
    desired: DesiredState
    status: CollectorStatus | None
    """``None`` when the manager never ran it (e.g. a spec with ``state = "stopped"``)."""
    spec: CollectorSpec | None
    spec_file: str | None
    spec_hash: str | None
    applied_spec_hash: str | None
    spec_error: str | None
    override: Override | None
    converged: bool
    log_file: str | None = None
    """The collector's current log file (``log = "file"``), where ``reconciler logs`` reads."""
    last_crash: Mapping[str, Any] | None = None
    """Its newest crash record (``reconciler crashes``): time, how, run length, log tail."""
    ready: bool = False
    """Its process ran ``min_ready_seconds`` and its ``ready_check`` (if any) passed (§4)."""
    rejected: Rejected | None = None
    """Its file's current content, rolled back after a failed rollout (until the file changes)."""
    held: str | None = None
    """Why a start or restart it needs waits: ``after`` not ready, its wave, a held rollout."""
    held_cause: str | None = None
    """``after``, ``wave`` or ``held`` (a failed rollout holds the waves)."""

    @property
    def state(self) -> CollectorState:
        return self.status.state if self.status is not None else CollectorState.STOPPED


class ExportedCollector(NamedTuple):
    """What the metrics exporter shows of one collector: the fields of its ``CollectorView``
    (and of the view's ``CollectorStatus``) that DESIGN §9 exports, with the same values.

    A tuple, made without a view or a status: at 1000 collectors, every scrape.
    """

    collector_id: str
    collector_type: str
    state: CollectorState
    desired: DesiredState
    """The effective desired state (``CollectorView.desired``)."""
    health: HealthStatus | None
    """``None`` when the manager never ran it (``CollectorView.status is None``)."""
    start_time: float | None
    restart_count: int
    last_exit_code: int | None
    uptime_seconds: float
    backoff_seconds: float
    applied_spec_hash: str | None
    ready: bool
    rejected_hash: str | None
    """``CollectorView.rejected.spec_hash``."""
    spec_file: str | None


class Views:
    """The read side of ``Reconciler`` (which provides these attributes)."""

    snapshot: SpecSnapshot
    manager: CollectorProcessManager
    controller: Controller
    overrides: dict[str, Override]
    log_dir: Path | None
    last_crashes: dict[str, Mapping[str, Any]]

    def desired(self) -> dict[str, Desired]:
        raise NotImplementedError  # the Reconciler's

    def view(self, collector_id: str) -> CollectorView:
        views = {v.collector_id: v for v in self.views([collector_id])}
        if collector_id not in views:
            raise ProcessNotFound(f"no collector {collector_id!r}")
        return views[collector_id]

    def views(self, only: Iterable[str] | None = None) -> list[CollectorView]:
        """Every collector known (or those of ``only``), for status, metrics and the API.

        Read at every scrape: one pass over the records, nothing planned.
        """
        snapshot = self.snapshot
        problems_by_id = {
            problem.collector_id: problem
            for problem in snapshot.problems.values()
            if problem.collector_id is not None
        }
        records = self.manager.executor.records
        held, busy = self.controller.held, self.controller.busy
        if only is None:
            known = sorted(snapshot.specs.keys() | records.keys() | problems_by_id.keys())
        else:
            known = sorted(
                cid
                for cid in set(only)
                if cid in snapshot.specs or cid in records or cid in problems_by_id
            )
        desired_all, overrides = self.desired(), self.overrides
        now = self.controller.clock.now()
        log_dir = str(self.log_dir) if self.log_dir is not None else None
        result = []
        for collector_id in known:
            loaded = snapshot.specs.get(collector_id)
            record = records.get(collector_id)
            status = record.status(now) if record is not None else None
            desired = desired_all.get(collector_id)
            override = overrides.get(collector_id)
            problem = problems_by_id.get(collector_id)
            applied = record.applied if record is not None else None
            want = (
                effective_state(desired, override) if desired is not None else DesiredState.STOPPED
            )
            spec = loaded.spec if loaded is not None else None
            hold = held.get(collector_id)
            result.append(
                CollectorView(
                    collector_id=collector_id,
                    collector_type=(
                        spec.type if spec is not None else status.collector_type if status else ""
                    ),
                    desired=want,
                    status=status,
                    spec=spec,
                    spec_file=(
                        f"{collector_id}.toml" if loaded else (problem.file if problem else None)
                    ),
                    spec_hash=loaded.spec_hash if loaded else None,
                    applied_spec_hash=applied.spec_hash if applied else None,
                    spec_error=problem.message if problem else None,
                    override=override,
                    converged=(
                        desired is not None
                        and collector_id not in busy
                        and converged(desired, record, override)
                    ),
                    log_file=(
                        f"{log_dir}/{collector_id}.log"
                        if log_dir is not None and spec is not None and spec.log == "file"
                        else None
                    ),
                    last_crash=self.last_crashes.get(collector_id),
                    ready=record is not None and record.ready,
                    rejected=_rejected(record, loaded.spec_hash if loaded else None),
                    held=hold.reason if hold is not None else None,
                    held_cause=hold.cause if hold is not None else None,
                )
            )
        return result

    def exported(self) -> list[ExportedCollector]:
        """What ``views()`` says of every collector that the metrics exporter shows, in its order.

        Read at every scrape. The same facts as ``views()`` (a test holds
        them equal), without what only the API and status show (the
        convergence check, log file, crash record, holds), and with no view
        or status object per collector: ``views()`` at 1000 collectors took
        12-19 ms, most of a scrape.
        """
        snapshot = self.snapshot
        specs, problems = snapshot.specs, snapshot.problems
        problems_by_id = (
            {
                problem.collector_id: problem
                for problem in problems.values()
                if problem.collector_id is not None
            }
            if problems
            else {}
        )
        records = self.manager.executor.records
        known = sorted(specs.keys() | records.keys() | problems_by_id.keys())
        desired_all, overrides = self.desired(), self.overrides
        now = self.controller.clock.now()
        stopped, result = CollectorState.STOPPED, []
        for collector_id in known:
            loaded = specs.get(collector_id)
            record = records.get(collector_id)
            desired = desired_all.get(collector_id)
            want = (
                DesiredState.STOPPED
                if desired is None
                else effective_state(desired, overrides.get(collector_id))
            )
            file_hash = loaded.spec_hash if loaded is not None else None
            if loaded is not None:
                spec_file: str | None = f"{collector_id}.toml"
            else:
                problem = problems_by_id.get(collector_id)
                spec_file = problem.file if problem is not None else None
            if record is None:
                result.append(
                    ExportedCollector(
                        collector_id, loaded.spec.type if loaded is not None else "", stopped,
                        want, None, None, 0, None, 0.0, 0.0, None, False, None, spec_file,
                    )
                )  # fmt: skip
                continue
            run, applied, rejected = record.run, record.applied, record.rejected
            # Positional: a NamedTuple by keywords costs twice as much, 1000 times a scrape.
            result.append(
                ExportedCollector(
                    collector_id,
                    loaded.spec.type if loaded is not None else record.collector_type,
                    record.state,
                    want,
                    record.health(),
                    run.started_wall if run is not None else None,
                    record.restart_count,
                    record.last_exit_code,
                    now - run.started_at if run is not None else 0.0,
                    record.backoff_seconds(now),
                    applied.spec_hash if applied is not None else None,
                    record.ready,
                    rejected.spec_hash
                    if rejected is not None and rejected.spec_hash == file_hash
                    else None,
                    spec_file,
                )
            )
        return result


def _rejected(record: CollectorRecord | None, file_hash: str | None) -> Rejected | None:
    """The record's rejection, while the file still says that content."""
    if record is None or record.rejected is None or record.rejected.spec_hash != file_hash:
        return None
    return record.rejected
