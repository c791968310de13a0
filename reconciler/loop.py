"""The reconcile loop: triggers -> snapshot -> plan -> execute, per collector serialised.

Level-triggered (STYLE §1): a spec snapshot, a process exit, a manager event,
a timer or an operator action only *wakes* the loop; each pass re-reads the
whole desired state (the spec source's last-known-good snapshot plus operator
overrides) and the whole observed state (the process manager), asks the pure
planner what to do, and runs each action in a task of its own. One collector
has at most one action in flight — its next pass waits until that ends — and
different collectors proceed concurrently, so one slow graceful stop never
delays another collector's start. Bursts coalesce: a collector busy with an
action is re-planned from the newest snapshot once it is free.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ProcessManagerError, ProcessNotFound, ReconcilerError
from reconciler.plan.planner import (
    Action,
    Desired,
    Forget,
    Observed,
    Override,
    Pause,
    Restart,
    Resume,
    Start,
    Stop,
    Update,
    converged,
    plan,
)
from reconciler.process import CollectorProcessManager, ManagerEvent
from reconciler.process.logs import rotate_all
from reconciler.source import SpecSnapshot, SpecSource
from reconciler.spec.models import CollectorConfig, CollectorSpec
from reconciler.state import CollectorState, CollectorStatus, DesiredState

log = logging.getLogger(__name__)

EVENTS_KEPT = 1000
LOG_ROTATION_INTERVAL_SECONDS = 10.0
PASS_SPACING_FACTOR = 3.0
"""After a pass that took d seconds, the next starts no sooner than 3·d later: a
pass is O(collectors), and a thousand start completions would otherwise each
buy one, starving the starts themselves. Small fleets see no delay (d ~ 0.1 ms)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event record: what was done or seen, when and why."""

    wall_time: float
    collector_id: str
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Applied:
    spec: CollectorSpec
    spec_hash: str
    process_hash: str


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

    @property
    def state(self) -> CollectorState:
        return self.status.state if self.status is not None else CollectorState.STOPPED


def resolve_spec_paths(spec: CollectorSpec, specs_dir: Path) -> CollectorConfig:
    """The manager's config for a spec, with a spec-relative ``binary_path`` made absolute."""
    config = spec.collector_config()
    binary = config.binary_path
    if binary is not None and os.sep in binary and not os.path.isabs(binary):
        config = config.model_copy(update={"binary_path": str((specs_dir / binary).resolve())})
    return config


class Reconciler:
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
    ) -> None:
        self.source = source
        self.manager = manager
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.overrides: dict[str, Override] = dict(overrides or {})
        self._on_overrides_changed = on_overrides_changed
        self.snapshot: SpecSnapshot = source.snapshot
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.applied: dict[str, Applied] = {}
        self.ready = asyncio.Event()
        self.alive = False
        """True while ``run()`` is reconciling (``/healthz``)."""
        self.passes = 0
        self.last_pass_duration_seconds = 0.0
        self.pass_listeners: list[Callable[[float], None]] = []
        self.action_listeners: list[Callable[[str, str], None]] = []
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._desired: dict[str, Desired] = {}
        self._desired_for: SpecSnapshot | None = None
        manager.add_listener(self._on_manager_event)

    # -- triggers ---------------------------------------------------------------

    def wake(self) -> None:
        """Something may differ: look again."""
        self._wake.set()

    def _on_manager_event(self, event: ManagerEvent) -> None:
        self.events.append(Event(event.wall_time, event.collector_id, event.kind, event.message))
        self.wake()

    def record(self, collector_id: str, kind: str, message: str) -> None:
        self.events.append(Event(time.time(), collector_id, kind, message))

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled or ``stop()``; the caller shuts the manager down."""
        self.snapshot = await asyncio.to_thread(self.source.scan)
        watcher = asyncio.create_task(self._follow_source(), name="spec source")
        rotation = asyncio.create_task(self._rotate_logs(), name="log rotation")
        self.alive = True
        try:
            while not self._stopping:
                self._wake.clear()
                started = time.perf_counter()
                self._pass()
                self.last_pass_duration_seconds = time.perf_counter() - started
                self.passes += 1
                for listener in self.pass_listeners:
                    listener(self.last_pass_duration_seconds)
                if not self.ready.is_set() and not self._busy:
                    self.ready.set()
                await self._wake.wait()
                # Let wake-ups that arrive meanwhile share the next pass.
                await asyncio.sleep(self.last_pass_duration_seconds * PASS_SPACING_FACTOR)
        finally:
            self.alive = False
            watcher.cancel()
            rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await rotation

    async def stop(self) -> None:
        """Stop planning and let in-flight actions finish."""
        self._stopping = True
        self.wake()
        busy = list(self._busy.values())
        if busy:
            await asyncio.gather(*busy, return_exceptions=True)

    async def _follow_source(self) -> None:
        async with contextlib.aclosing(self.source.watch()) as snapshots:
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
        while True:
            await asyncio.sleep(LOG_ROTATION_INTERVAL_SECONDS)
            try:
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

    def desired(self) -> dict[str, Desired]:
        """The desired state, rebuilt only when a new snapshot arrived."""
        snapshot = self.snapshot
        if self._desired_for is not snapshot:
            self._desired = {
                collector_id: Desired(loaded.spec, loaded.spec_hash, loaded.process_hash)
                for collector_id, loaded in snapshot.specs.items()
            }
            self._desired_for = snapshot
        return self._desired

    def observed(self) -> dict[str, Observed]:
        result = {}
        for collector_id in self.manager.collector_ids():
            applied = self.applied.get(collector_id)
            result[collector_id] = Observed(
                state=self.manager.state_of(collector_id),
                applied=applied.spec if applied else None,
                applied_spec_hash=applied.spec_hash if applied else None,
                applied_process_hash=applied.process_hash if applied else None,
            )
        # A spec that asks for "stopped" from the start has no manager record,
        # yet it is applied: keep it from looking new on every pass.
        for collector_id, applied in self.applied.items():
            if collector_id not in result:
                result[collector_id] = Observed(
                    CollectorState.STOPPED, applied.spec, applied.spec_hash, applied.process_hash
                )
        return result

    def _pass(self) -> None:
        self._expire_overrides()
        actions = plan(
            self.desired(),
            self.observed(),
            asyncio.get_running_loop().time(),
            overrides=self.overrides,
        )
        for action in actions:
            if action.collector_id in self._busy:
                continue  # re-planned from the newest state once its action ends
            self._busy[action.collector_id] = asyncio.create_task(
                self._execute(action), name=f"{type(action).__name__} {action.collector_id}"
            )

    def _expire_overrides(self) -> None:
        """An override ends when its collector's spec changes or the file goes."""
        specs = self.snapshot.specs
        expired = [
            collector_id
            for collector_id, override in self.overrides.items()
            if collector_id not in specs or specs[collector_id].spec_hash != override.spec_hash
        ]
        for collector_id in expired:
            del self.overrides[collector_id]
            self.record(collector_id, "override", "operator override ended: spec changed")
        if expired:
            self._overrides_changed()

    def _overrides_changed(self) -> None:
        if self._on_overrides_changed is not None:
            self._on_overrides_changed(dict(self.overrides))

    # -- execution --------------------------------------------------------------

    async def _execute(self, action: Action) -> None:
        name = type(action).__name__.lower()
        collector_id = action.collector_id
        log.info("%s: %s (%s)", collector_id, name, action.reason)
        self.record(collector_id, name, action.reason)
        result = "success"
        try:
            await self._carry_out(action)
        except ReconcilerError as exc:
            result = "error"
            log.error("%s: %s failed: %s: %s", collector_id, name, exc.code, exc.message)
            self.record(collector_id, "error", f"{name} failed: {exc.message}")
        except Exception:
            result = "error"
            log.exception("%s: %s failed", collector_id, name)
        finally:
            self._busy.pop(collector_id, None)
            for listener in self.action_listeners:
                listener(name, result)
            self.wake()

    async def _carry_out(self, action: Action) -> None:
        collector_id = action.collector_id
        if isinstance(action, Start | Restart | Update):
            await self._apply_spec(action)
        elif isinstance(action, Stop):
            await self._stop(action)
        elif isinstance(action, Forget):
            await self._forget(collector_id)
        elif isinstance(action, Pause):
            await self.manager.pause_collector(collector_id)
        elif isinstance(action, Resume):
            await self.manager.resume_collector(collector_id)

    async def _apply_spec(self, action: Start | Restart | Update) -> None:
        collector_id, spec, manager = action.collector_id, action.spec, self.manager
        config = resolve_spec_paths(spec, self.source.specs_dir)
        loaded = self.snapshot.specs.get(collector_id)
        process_hash = loaded.process_hash if loaded else ""
        # Recorded first: a spec that fails to start stays failed until it changes.
        self.applied[collector_id] = Applied(spec, action.spec_hash, process_hash)
        known = collector_id in manager.collector_ids()
        if isinstance(action, Update):
            if known:
                await manager.replace_config(collector_id, config)
        elif isinstance(action, Restart) and known:
            await manager.restart_collector(
                collector_id,
                config=config,
                collector_type=spec.type,
                reason=f"restarted ({action.reason})",
            )
        else:
            await manager.start_collector(collector_id, spec.type, config)

    async def _stop(self, action: Stop) -> None:
        collector_id = action.collector_id
        if collector_id in self.manager.collector_ids():
            await self.manager.stop_collector(collector_id)
        if action.forget:
            await self._forget(collector_id)
            return
        loaded = self.snapshot.specs.get(collector_id)
        if collector_id not in self.manager.collector_ids() and loaded is not None:
            self.applied[collector_id] = Applied(loaded.spec, loaded.spec_hash, loaded.process_hash)

    async def _forget(self, collector_id: str) -> None:
        with contextlib.suppress(ProcessNotFound):
            await self.manager.forget_collector(collector_id)
        self.applied.pop(collector_id, None)
        if self.overrides.pop(collector_id, None) is not None:
            self._overrides_changed()

    # -- operator actions (control API) -------------------------------------------

    def _require_spec(self, collector_id: str) -> Desired:
        loaded = self.snapshot.specs.get(collector_id)
        if loaded is None:
            raise ProcessNotFound(f"no collector {collector_id!r}")
        return Desired(loaded.spec, loaded.spec_hash, loaded.process_hash)

    async def operator_override(self, collector_id: str, action: DesiredState) -> None:
        """Pause or resume by operator: an override that holds until the spec changes."""
        desired = self._require_spec(collector_id)
        verb = "paused" if action == DesiredState.PAUSED else "resumed"
        self.overrides[collector_id] = Override(action, desired.spec_hash, f"{verb} by operator")
        self.record(collector_id, "override", f"{verb} by operator")
        self._overrides_changed()
        self.wake()

    async def operator_restart(self, collector_id: str) -> int:
        """Graceful restart now, serialised with the collector's other actions."""
        self._require_spec(collector_id)
        while (busy := self._busy.get(collector_id)) is not None:
            await asyncio.wait({busy})
        if collector_id not in self.manager.collector_ids():
            raise ProcessNotFound(f"collector {collector_id!r} has never run")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def restart() -> None:
            result = "error"
            try:
                self.record(collector_id, "restart", "restarted by operator")
                done.set_result(
                    await self.manager.restart_collector(
                        collector_id, reason="restarted by operator"
                    )
                )
                result = "success"
            except BaseException as exc:
                done.set_exception(exc)
            finally:
                self._busy.pop(collector_id, None)
                for listener in self.action_listeners:
                    listener("restart", result)
                self.wake()

        self._busy[collector_id] = asyncio.create_task(restart())
        return await done

    # -- views ----------------------------------------------------------------------

    def view(self, collector_id: str) -> CollectorView:
        views = {v.collector_id: v for v in self.views([collector_id])}
        if collector_id not in views:
            raise ProcessNotFound(f"no collector {collector_id!r}")
        return views[collector_id]

    def views(self, only: Iterable[str] | None = None) -> list[CollectorView]:
        snapshot = self.snapshot
        problems_by_id = {
            problem.collector_id: problem
            for problem in snapshot.problems.values()
            if problem.collector_id is not None
        }
        managed = set(self.manager.collector_ids())
        known = set(snapshot.specs) | managed | set(problems_by_id)
        if only is not None:
            known &= set(only)
        desired_all, observed_all = self.desired(), self.observed()
        result = []
        for collector_id in sorted(known):
            loaded = snapshot.specs.get(collector_id)
            status = self.manager.status(collector_id) if collector_id in managed else None
            desired = desired_all.get(collector_id)
            override = self.overrides.get(collector_id)
            problem = problems_by_id.get(collector_id)
            applied = self.applied.get(collector_id)
            if desired is not None:
                want = (
                    override.action
                    if (override is not None and override.spec_hash == desired.spec_hash)
                    else desired.spec.state
                )
            else:
                want = DesiredState.STOPPED
            result.append(
                CollectorView(
                    collector_id=collector_id,
                    collector_type=(
                        loaded.spec.type if loaded else status.collector_type if status else ""
                    ),
                    desired=want,
                    status=status,
                    spec=loaded.spec if loaded else None,
                    spec_file=loaded.path.name if loaded else (problem.file if problem else None),
                    spec_hash=loaded.spec_hash if loaded else None,
                    applied_spec_hash=applied.spec_hash if applied else None,
                    spec_error=problem.message if problem else None,
                    override=override,
                    converged=(
                        desired is not None
                        and collector_id not in self._busy
                        and converged(desired, observed_all.get(collector_id), override)
                    ),
                )
            )
        return result


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
