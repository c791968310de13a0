"""The reconcile loop: spec snapshots in, the one controller runs plan -> execute.

Level-triggered (STYLE §1): a spec snapshot, a process exit, a probe result,
a timer or an operator action only *wakes* the controller; each pass re-reads
the whole desired state (the spec source's last-known-good snapshot plus
operator overrides) and the whole observed state (the executor's records),
asks the pure planner what to do — spec changes, crash restarts, backoff,
``failed``, probe restarts alike — and carries it out (stops before starts;
one action in flight per collector; collectors concurrently). This module
supplies the desired state, follows the spec directory, rotates logs and
answers for views and operator actions; ``reconciler.process.controller``
runs the passes.

Called by ``reconciler run`` (``reconciler.daemon``); the metrics exporter and
the control API read its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import InvalidSpec, ProcessManagerError, ProcessNotFound
from reconciler.plan.actions import Action, Rollback, kind
from reconciler.plan.planner import Desired, Observed, Override
from reconciler.plan.rollout import RolloutSettings
from reconciler.process import Applied, CollectorProcessManager, ManagerEvent
from reconciler.process.logs import any_log_over, rotate_all
from reconciler.source import SpecSnapshot, SpecSource
from reconciler.spec.identity import spec_hashes
from reconciler.spec.load import collector_id_from_filename, parse_spec
from reconciler.spec.models import CollectorConfig, CollectorSpec
from reconciler.spec.order import after_problems
from reconciler.state import DesiredState
from reconciler.views import CollectorView, ExportedCollector, Views

if TYPE_CHECKING:
    from reconciler.plan.diff import DiffLine

__all__ = [
    "Applied",
    "CollectorView",
    "Event",
    "ExportedCollector",
    "Reconciler",
    "resolve_spec_paths",
    "run_until",
]

log = logging.getLogger(__name__)

EVENTS_KEPT = 1000
LOG_ROTATION_INTERVAL_SECONDS = 10.0
"""Between log size checks while no log grows past its limit."""
LOG_ROTATION_BUSY_SECONDS = 0.25
"""Between checks right after a rotation: a flooding collector is cut back fast."""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event record: what was done or seen, when and why."""

    wall_time: float
    collector_id: str
    kind: str
    message: str


def resolve_spec_paths(spec: CollectorSpec, specs_dir: Path) -> CollectorConfig:
    """The manager's config for a spec, with a spec-relative ``binary_path`` made absolute.

    The spec itself where no path changes: a ``CollectorSpec`` is a ``CollectorConfig``,
    and the manager reads only the config's fields. A second model per collector was
    0.9 KiB of the daemon's memory each, and a dump and a validation (~11 us) per start.
    """
    binary = spec.binary_path
    if binary is not None and os.sep in binary and not os.path.isabs(binary):
        return spec.model_copy(update={"binary_path": str((specs_dir / binary).resolve())})
    return spec


def desired_from(snapshot: SpecSnapshot) -> dict[str, Desired]:
    """The desired state a spec snapshot describes."""
    return {
        collector_id: Desired(loaded.spec, loaded.spec_hash, loaded.process_hash)
        for collector_id, loaded in snapshot.specs.items()
    }


def desired_from_files(files: Mapping[str, bytes]) -> dict[str, Desired]:
    """Parse a whole spec tree given as file name -> bytes; ``InvalidSpec`` lists every problem."""
    result: dict[str, Desired] = {}
    problems: list[str] = []
    for name, data in sorted(files.items()):
        try:
            collector_id = collector_id_from_filename(name)
            spec = parse_spec(data, filename=name, collector_id=collector_id)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
            continue
        result[collector_id] = Desired(spec, *spec_hashes(spec))
    known = {name.removesuffix(".toml").rpartition("/")[2] for name in files}
    graph = after_problems({cid: d.spec.after for cid, d in result.items()}, known=known)
    problems.extend(problem for _cid, problem in sorted(graph.items()))
    if problems:
        raise InvalidSpec("; ".join(problems), problems=problems)
    return result


class Reconciler(Views):
    """Keeps the manager's processes equal to the spec directory."""

    def __init__(
        self,
        *,
        source: SpecSource,
        manager: CollectorProcessManager,
        log_dir: Path | None = None,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 5,
        overrides: dict[str, Override] | None = None,
        on_overrides_changed: Callable[[dict[str, Override]], None] | None = None,
        persist: Callable[[], None] | None = None,
        rollout: RolloutSettings | None = None,
    ) -> None:
        self.source = source
        self.manager = manager
        self.controller = manager.controller
        self.log_dir = log_dir
        self.last_crashes: dict[str, Mapping[str, Any]] = {}
        """The newest crash record of each collector, kept current by the daemon."""
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.overrides: dict[str, Override] = dict(overrides or {})
        self._on_overrides_changed = on_overrides_changed
        self._persist = persist
        self.snapshot: SpecSnapshot = source.snapshot
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.ready = asyncio.Event()
        self.alive = False
        """True while ``run()`` is reconciling (``/healthz``)."""
        self.state_file_errors = 0
        """State files that could not be read or written (counted by the daemon)."""
        self._desired: dict[str, Desired] = {}
        self._desired_for: SpecSnapshot | None = None
        self._kept_for: SpecSnapshot | None = None
        self._kept_key: tuple[tuple[str, str], ...] = ()
        self._with_kept: dict[str, Desired] = {}
        specs_dir = source.specs_dir
        manager.executor.configure = lambda _id, spec: resolve_spec_paths(spec, specs_dir)
        self.controller.drive(desired=self.desired, overrides=self._current_overrides)
        if rollout is not None:
            self.controller.settings = rollout
        self.controller.begin_listeners.append(self._on_action_begin)
        manager.add_listener(self._on_manager_event)

    # -- what the controller exposes ----------------------------------------------

    @property
    def passes(self) -> int:
        return self.controller.passes

    @property
    def last_pass_duration_seconds(self) -> float:
        return self.controller.last_pass_duration_seconds

    @property
    def pass_listeners(self) -> list[Callable[[float], None]]:
        return self.controller.pass_listeners

    @property
    def action_listeners(self) -> list[Callable[[str, str], None]]:
        return self.controller.action_listeners

    @property
    def rollout(self) -> RolloutSettings:
        """The ``[reconciler]`` rollout keys; set anew on a config reload."""
        return self.controller.settings

    @rollout.setter
    def rollout(self, settings: RolloutSettings) -> None:
        if settings != self.controller.settings:
            self.controller.settings = settings
            self.wake()

    @property
    def rollout_held(self) -> bool:
        """Waves of a push are held after a failed rollout (``reconciler_rollout_held``)."""
        return self.controller.rollout_held

    @property
    def applied(self) -> dict[str, Applied]:
        """The spec each collector's process was last started or updated with."""
        return {
            cid: record.applied
            for cid, record in self.manager.executor.records.items()
            if record.applied is not None
        }

    # -- triggers ---------------------------------------------------------------

    def wake(self, collector_id: str | None = None) -> None:
        """Something may differ (for one collector, or any): look again."""
        self.controller.wake(collector_id)

    def _on_manager_event(self, event: ManagerEvent) -> None:
        self.events.append(Event(event.wall_time, event.collector_id, event.kind, event.message))

    def _on_action_begin(self, action: Action) -> None:
        if isinstance(action, Rollback):
            return  # the executor's own event says it, with the reason
        name = kind(action)
        log.info("%s: %s (%s)", action.collector_id, name, action.reason)
        self.record(action.collector_id, name, action.reason)

    def record(self, collector_id: str, kind: str, message: str) -> None:
        self.events.append(Event(time.time(), collector_id, kind, message))

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled or ``stop()``; the caller shuts the manager down."""
        # The watch is in place before its first scan, whose snapshot the loop starts from.
        snapshots = self.source.watch()
        try:
            self.snapshot = await anext(snapshots)
            await self.manager.driver.open()
        except BaseException:
            await snapshots.aclose()
            raise
        watcher = asyncio.create_task(self._follow_source(snapshots), name="spec source")
        rotation = asyncio.create_task(self._rotate_logs(), name="log rotation")
        self.alive = True
        try:
            await self.controller.run(on_pass=self._after_pass)
        finally:
            self.alive = False
            watcher.cancel()
            rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await rotation

    def _after_pass(self) -> None:
        if not self.ready.is_set() and not self.controller.busy:
            self.ready.set()

    async def stop(self) -> None:
        """Stop planning and let in-flight actions finish."""
        await self.controller.hold()

    async def _follow_source(self, snapshots: AsyncGenerator[SpecSnapshot, None]) -> None:
        async with contextlib.aclosing(snapshots):
            async for snapshot in snapshots:
                self._offer(snapshot)

    def _offer(self, snapshot: SpecSnapshot) -> None:
        # The watcher and rescan() both deliver snapshots: never go back to an older one.
        if snapshot.generation >= self.snapshot.generation:
            self.snapshot = snapshot
            self.wake()

    async def rescan(self) -> None:
        """Read the spec directory now, without waiting for a notification.

        What the control API's reload and ``reconciler wait`` use, so a client
        that has just pushed a file sees it taken into account.
        """
        self._offer(await asyncio.to_thread(self.source.scan))
        self.wake()

    async def _rotate_logs(self) -> None:
        if self.log_dir is None:
            return
        interval = LOG_ROTATION_INTERVAL_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                # A stat of each log, here in the loop (no thread to wake while all
                # are small); the copying, when one is past its limit, in a thread.
                if not any_log_over(self.log_dir, max_bytes=self.log_max_bytes):
                    interval = min(interval * 2, LOG_ROTATION_INTERVAL_SECONDS)
                    continue
                rotated = await asyncio.to_thread(
                    rotate_all,
                    self.log_dir,
                    max_bytes=self.log_max_bytes,
                    backups=self.log_backups,
                )
            except OSError as exc:
                log.warning("log rotation in %s failed: %s", self.log_dir, exc)
                continue
            for path in rotated:
                log.info("rotated %s", path)
            # Quick again after a rotation, backing off to the quiet interval.
            interval = (
                LOG_ROTATION_BUSY_SECONDS
                if rotated
                else min(interval * 2, LOG_ROTATION_INTERVAL_SECONDS)
            )

    def desired(self) -> dict[str, Desired]:
        """The desired state: the snapshot's specs, plus last-known-good for invalid files.

        A collector whose file exists but does not validate keeps the spec it
        runs (DESIGN §2) — also when that spec is known only from the state
        file, after a reconciler restart: only a file that is gone stops it.
        """
        snapshot = self.snapshot
        if self._desired_for is not snapshot:
            self._desired = desired_from(snapshot)
            self._desired_for = snapshot
            self._expire_rejections()
        if not snapshot.problems:
            return self._desired
        records = self.manager.executor.records
        kept = {}
        for problem in snapshot.problems.values():
            collector_id = problem.collector_id
            if collector_id is None or collector_id in self._desired:
                continue
            record = records.get(collector_id)
            if record is not None and record.applied is not None:
                kept[collector_id] = record.applied
        # Asked for on every pass: copy the whole mapping only when what is kept changed.
        key = tuple((cid, applied.spec_hash) for cid, applied in sorted(kept.items()))
        if self._kept_for is not snapshot or key != self._kept_key:
            self._kept_for, self._kept_key = snapshot, key
            self._with_kept = {
                **self._desired,
                **{cid: Desired(a.spec, a.spec_hash, a.process_hash) for cid, a in kept.items()},
            }
        return self._with_kept

    def _expire_rejections(self) -> None:
        """A rejection ends when its file changes (or goes): that content may be tried again."""
        for collector_id, record in self.manager.executor.records.items():
            rejected = record.rejected
            if rejected is None:
                continue
            loaded = self.snapshot.specs.get(collector_id)
            if loaded is None or loaded.spec_hash != rejected.spec_hash:
                record.rejected = None
                record.changed()
                self.record(collector_id, "rollback", "rejection ended: the spec file changed")

    def observed(self) -> Mapping[str, Observed]:
        return self.manager.executor.observed()

    def _current_overrides(self) -> Mapping[str, Override]:
        self._expire_overrides()
        return self.overrides

    def _expire_overrides(self) -> None:
        """An override ends when its collector's spec changes or the file goes."""
        desired = self.desired()
        expired = [
            collector_id
            for collector_id, override in self.overrides.items()
            if collector_id not in desired or desired[collector_id].spec_hash != override.spec_hash
        ]
        for collector_id in expired:
            del self.overrides[collector_id]
            self.record(collector_id, "override", "operator override ended: spec changed")
        if expired:
            self._overrides_changed()

    def _overrides_changed(self) -> None:
        if self._on_overrides_changed is not None:
            self._on_overrides_changed(dict(self.overrides))

    def persist(self) -> None:
        """Write what adoption and overrides depend on to disk now (fsync'd).

        An operator action is answered only after this: a SIGKILL of the
        reconciler the moment the answer is sent loses nothing of it.
        """
        if self._persist is not None:
            self._persist()

    def diff(self, files: Mapping[str, bytes] | None = None) -> list[DiffLine]:
        """What applying these spec files would do, from the same ``plan()`` (``reconciler diff``).

        ``files`` maps file names to their bytes, as a whole specs directory
        (a collector without a file would be stopped); ``None``: the specs
        directory as last read. ``InvalidSpec`` names every file, key and reason.
        """
        # Loaded by the first diff asked for: most daemons never plan one.
        from reconciler.plan.diff import diff

        desired = self.desired() if files is None else desired_from_files(files)
        return diff(
            desired,
            self.observed(),
            self.controller.clock.now(),
            overrides=self.overrides,
            defaults=self.manager.config,
            settings=self.controller.settings,
        )

    # -- operator actions (control API) -------------------------------------------

    def _require_spec(self, collector_id: str) -> Desired:
        loaded = self.snapshot.specs.get(collector_id)
        if loaded is None:
            raise ProcessNotFound(f"no collector {collector_id!r}")
        return Desired(loaded.spec, loaded.spec_hash, loaded.process_hash)

    async def operator_override(self, collector_id: str, action: DesiredState) -> None:
        """Pause or resume by operator: an override that holds until the spec changes.

        The opposite action ends an override: a resume that only undoes a pause
        (the spec says ``running``) leaves none behind (DESIGN §7). Persisted
        through ``on_overrides_changed`` before this returns.
        """
        desired = self._require_spec(collector_id)
        verb = "paused" if action == DesiredState.PAUSED else "resumed"
        if action == desired.spec.state:
            if self.overrides.pop(collector_id, None) is not None:
                self.record(
                    collector_id, "override", f"operator override ended: {verb} by operator"
                )
        else:
            self.overrides[collector_id] = Override(
                action, desired.spec_hash, f"{verb} by operator"
            )
            self.record(collector_id, "override", f"{verb} by operator")
        self._overrides_changed()
        self.wake(collector_id)

    async def operator_restart(self, collector_id: str) -> int:
        """Graceful restart now, serialised with the collector's other actions."""
        self._require_spec(collector_id)
        if collector_id not in self.manager.collector_ids():
            raise ProcessNotFound(f"collector {collector_id!r} has never run")

        async def restart() -> int:
            result = "error"
            try:
                self.record(collector_id, "restart", "restarted by operator")
                pid = await self.manager.restart_collector(
                    collector_id, reason="restarted by operator"
                )
                self.persist()  # the new pid is on disk before the answer
                result = "success"
                return pid
            finally:
                for listener in self.action_listeners:
                    listener("restart", result)

        return await self.controller.exclusive(collector_id, restart)

async def run_until(
    reconciler: Reconciler,
    stop: asyncio.Event,
    *,
    keep_collectors: Callable[[], bool] = lambda: False,
) -> None:
    """Run the loop until ``stop`` is set, then stop every collector concurrently."""
    task = asyncio.create_task(reconciler.run(), name="reconcile loop")
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await reconciler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Asked at the end, not the start: a reload may have changed on_exit.
        if not keep_collectors():
            try:
                await reconciler.manager.shutdown_all()
            except ProcessManagerError as exc:
                log.error("shutdown: %s: %s", exc.code, exc.message)
