"""``reconciler run``: config and flags -> spec source, process manager, loop, servers.

Composes the runtime pieces and owns the process-wide concerns: logging to
stderr (text or JSON lines), SIGHUP (reload the config file), SIGTERM and
SIGINT (stop every collector concurrently and exit 0, or keep them running for
re-adoption with ``on_exit = "keep"``). Called by ``reconciler.cli``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler import __version__
from reconciler.api import ApiServer
from reconciler.crashes import CRASH_DIR_NAME, CrashRecorder, LogSnapshot, list_files
from reconciler.errors import InvalidSpec, ProcessNotFound, ReconcilerError
from reconciler.loop import Applied, Reconciler, resolve_spec_paths, run_until
from reconciler.metrics import MetricsServer
from reconciler.notify import sd_notify
from reconciler.plan.planner import Desired
from reconciler.plan.rollout import RolloutSettings
from reconciler.process import CollectorProcessManager, ManagerEvent
from reconciler.source import SpecSource
from reconciler.spec.load import parse_manager_config
from reconciler.spec.models import CollectorSpec, ManagerConfigFile, ReconcilerSettings
from reconciler.statefile import (
    AdoptionRecord,
    SavedState,
    StateRenderer,
    load_state,
    save_state,
)

log = logging.getLogger("reconciler")

STATE_SAVE_DELAY_SECONDS = 0.05
"""Coalesces bursts of changes into one write of the state file."""
STATE_SAVE_SPACING_FACTOR = 10.0
STATE_SAVE_MAX_DELAY_SECONDS = 1.0
"""A save that took d seconds waits max(50 ms, 10·d), at most 1 s, before the next
automatic one: at 1,000 collectors a save costs ~15-20 ms, and a cold start made one
every 50 ms (a third of its CPU). What an operator asked for is saved at once."""
CRASH_RECORD_DELAY_SECONDS = 0.02
"""A crash record is written this long after the exit: after its replacement's start."""
STATE_CHANGING_EVENTS = frozenset(
    {
        "started",
        "ready",
        "rollback",
        "rollout_done",
        "stopped",
        "adopted",
        "failed",
        "spawn_failed",
        "paused",
        "resumed",
    }
)
"""Events after which the state file is saved. Not ``exited`` or ``backoff``: the run
they end stays listed until the restart's ``started`` (or ``failed``, ``stopped``)
saves, and a successor does not adopt it meanwhile (its pid and start time no longer
match a live process). A crash loop wrote the file twice per restart."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Command-line flags of ``reconciler run``; ``None`` means "from the config file"."""

    config_path: Path | None = None
    specs_dir: Path | None = None
    state_dir: Path | None = None
    metrics_address: str | None = None
    socket_path: Path | None = None
    log_format: str = "text"
    log_level: str = "INFO"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(log_format: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def load_config(options: RunOptions) -> ManagerConfigFile:
    """The config file (if any) with the command-line flags on top."""
    if options.config_path is not None:
        try:
            data = options.config_path.read_bytes()
        except OSError as exc:
            raise InvalidSpec(f"{options.config_path}: cannot read: {exc.strerror}") from exc
        config = parse_manager_config(data, filename=str(options.config_path))
    else:
        config = ManagerConfigFile()
    flags = {
        "specs_dir": options.specs_dir,
        "state_dir": options.state_dir,
        "metrics_address": options.metrics_address,
        "socket_path": options.socket_path,
    }
    updates = {key: value for key, value in flags.items() if value is not None}
    if updates:
        settings = ReconcilerSettings.model_validate({**config.reconciler.model_dump(), **updates})
        config = config.model_copy(update={"reconciler": settings})
    return config


def _rollout_settings(settings: ReconcilerSettings) -> RolloutSettings:
    return RolloutSettings(max_unavailable=settings.max_unavailable, rollback=settings.rollback)


class Daemon:
    """One running reconciler: what ``reconciler run`` starts and stops."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.config = load_config(options)
        settings = self.config.reconciler
        self.state_dir = settings.state_dir.resolve()
        self.log_dir = self.state_dir / "logs"
        self.state_path = self.state_dir / "state.toml"
        # One cgroup tree per state dir, stable across restarts: the next
        # reconciler finds the cgroups of the collectors it adopts there.
        tree = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        self.manager = CollectorProcessManager(
            self.config.process_manager,
            log_dir=self.log_dir,
            child_subreaper=True,
            cgroup_name=f"reconciler-{tree}",
            cgroup_delegated=True,
        )
        self.source = SpecSource(settings.specs_dir.resolve())
        self.reconciler = Reconciler(
            source=self.source,
            manager=self.manager,
            log_dir=self.log_dir,
            log_max_bytes=settings.log_max_bytes,
            log_backups=settings.log_backups,
            # An operator action is answered only once it is on disk (fsync'd).
            on_overrides_changed=lambda _: self._save_state(),
            persist=self._save_state,
            rollout=_rollout_settings(settings),
        )
        self.stop_requested = asyncio.Event()
        self._save_handle: asyncio.TimerHandle | None = None
        self._state_renderer = StateRenderer()
        self._save_seconds = 0.0
        """How long the last save took."""
        self.api: ApiServer | None = None
        # Built here so that a malformed address is a start-up error (exit 1).
        self.metrics = MetricsServer(self.reconciler, address=settings.metrics_address)
        self._spec_dumps: dict[str, dict[str, Any]] = {}
        self.crashes = CrashRecorder(self.state_dir / CRASH_DIR_NAME)
        self._pending_crashes: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        self._crash_handle: asyncio.TimerHandle | None = None

    def reload(self) -> None:
        """SIGHUP: re-read the config file; what needs a restart is said in the log."""
        sd_notify("RELOADING=1")
        try:
            self.reload_or_raise()
        except InvalidSpec as exc:
            for problem in exc.problems:
                log.error("config reload refused, keeping the running config: %s", problem)
        finally:
            # A SIGHUP during start-up: READY=1 waits for the first full reconcile.
            if self.reconciler.ready.is_set():
                sd_notify("READY=1")

    def reload_or_raise(self) -> None:
        """Re-read the config file; ``InvalidSpec`` (config kept) if it is not valid.

        The control API's ``POST /api/v1/reload`` uses this to answer with the problems.
        """
        fresh = load_config(self.options)
        old = self.config.reconciler
        new = fresh.reconciler
        needs_restart = [
            key
            for key in ("specs_dir", "state_dir", "metrics_address", "socket_path")
            if getattr(old, key) != getattr(new, key)
        ]
        for key in needs_restart:
            log.warning("config reload: %s changed; it takes effect on the next start", key)
        self.manager.update_config(fresh.process_manager)
        self.reconciler.log_max_bytes = new.log_max_bytes
        self.reconciler.log_backups = new.log_backups
        self.reconciler.rollout = _rollout_settings(new)
        self.config = fresh.model_copy(
            update={
                "reconciler": new.model_copy(
                    update={key: getattr(old, key) for key in needs_restart}
                )
            }
        )
        log.info("config reloaded")
        self.reconciler.wake()

    # -- the state file: overrides and adoption ---------------------------------

    def _state_changed(self) -> None:
        if self._save_handle is None:
            delay = min(
                max(STATE_SAVE_DELAY_SECONDS, STATE_SAVE_SPACING_FACTOR * self._save_seconds),
                STATE_SAVE_MAX_DELAY_SECONDS,
            )
            self._save_handle = asyncio.get_running_loop().call_later(delay, self._save_state)

    def _on_manager_event(self, event: ManagerEvent) -> None:
        if event.kind in STATE_CHANGING_EVENTS:
            self._state_changed()
        if event.kind == "exited":
            self._record_crash(event)

    def _record_crash(self, event: ManagerEvent) -> None:
        """An exit the spec did not ask for: keep what it left (``reconciler crashes``).

        The facts are taken now; the file is written ``CRASH_RECORD_DELAY_SECONDS``
        later, so that the replacement is not started behind a file write.
        """
        try:
            collector = self.manager.executor.get(event.collector_id)
        except ProcessNotFound:
            return
        config = collector.config
        limits = config.resource_limits
        log_path = self.log_dir / f"{event.collector_id}.log" if config.log == "file" else None
        write = functools.partial(
            self.crashes.record,
            event.collector_id,
            exit_code=collector.last_exit_code,
            description=event.message,
            run_seconds=collector.exit.run_seconds if collector.exit is not None else 0.0,
            # Held open now: the replacement's start moves the file aside.
            log=LogSnapshot.take(log_path),
            core_dump=limits is not None and limits.core_dump,
            cwd=config.working_dir or os.getcwd(),
            wall_time=event.wall_time,
        )
        self._pending_crashes.append((event.collector_id, write))
        if self._crash_handle is None:
            self._crash_handle = asyncio.get_running_loop().call_later(
                CRASH_RECORD_DELAY_SECONDS, self._write_crashes
            )

    def _write_crashes(self) -> None:
        self._crash_handle = None
        pending, self._pending_crashes = self._pending_crashes, []
        for collector_id, write in pending:
            try:
                crash = write()
            except OSError as exc:
                log.warning("%s: cannot write its crash record: %s", collector_id, exc)
                continue
            self.reconciler.last_crashes[collector_id] = crash

    def _remember_crash(self, path: Path) -> None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            record["file"] = str(path)
            self.reconciler.last_crashes[record["id"]] = record

    def _spec_dump(self, applied: Applied) -> dict[str, Any]:
        dump = self._spec_dumps.get(applied.spec_hash)
        if dump is None:
            dump = applied.spec.model_dump(mode="json", exclude_defaults=True)
            self._spec_dumps[applied.spec_hash] = dump
        return dump

    def saved_state(self) -> SavedState:
        collectors = {}
        applied_all = self.reconciler.applied  # built once: a dict of every record
        records = self.manager.executor.records
        for collector_id in self.manager.collector_ids():
            identity = self.manager.run_identity(collector_id)
            applied = applied_all.get(collector_id)
            if identity is None or applied is None:
                continue
            good = records[collector_id].good
            collectors[collector_id] = AdoptionRecord(
                collector_type=applied.spec.type,
                pid=identity.pid,
                start_ticks=identity.start_ticks,
                started_wall=identity.started_wall,
                cgroup_path=str(identity.cgroup_path) if identity.cgroup_path else None,
                spec=self._spec_dump(applied),
                spec_hash=applied.spec_hash,
                process_hash=applied.process_hash,
                ready_spec=good is not None and good.spec_hash == applied.spec_hash,
                rejected=records[collector_id].rejected,
            )
        return SavedState(overrides=dict(self.reconciler.overrides), collectors=collectors)

    def _state_file_error(self, _reason: str) -> None:
        self.reconciler.state_file_errors += 1

    def _save_state(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()  # this write covers what it would have written
            self._save_handle = None
        started = time.perf_counter()
        try:
            save_state(self.state_path, self.saved_state(), renderer=self._state_renderer)
        except OSError as exc:
            self.reconciler.state_file_errors += 1
            log.error("cannot write state file %s: %s", self.state_path, exc)
        self._save_seconds = time.perf_counter() - started

    async def adopt(self, saved: SavedState) -> None:
        """Take over the collectors an earlier reconciler left running."""
        self.reconciler.overrides.update(saved.overrides)
        for collector_id, record in saved.collectors.items():
            try:
                spec = CollectorSpec.model_validate(record.spec)
            except ValidationError:
                log.warning("%s: saved spec no longer valid; not adopted", collector_id)
                continue
            try:
                await self.manager.adopt_collector(
                    collector_id,
                    record.collector_type,
                    resolve_spec_paths(spec, self.source.specs_dir),
                    pid=record.pid,
                    start_ticks=record.start_ticks,
                    started_wall=record.started_wall,
                    cgroup_path=Path(record.cgroup_path) if record.cgroup_path else None,
                    applied=Applied(spec, record.spec_hash, record.process_hash),
                )
            except ProcessNotFound as exc:
                log.info("%s: not adopted: %s", collector_id, exc.message)
                continue
            adopted = self.manager.executor.records[collector_id]
            if record.ready_spec:
                adopted.good = Desired(spec, record.spec_hash, record.process_hash)
            adopted.rejected = record.rejected
        killed = await self.manager.sweep_stale_cgroups()
        if killed:
            log.info("killed %d processes left by collectors that died unwatched", len(killed))

    async def run(self) -> int:
        self._handle_signals()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        newest = {path.stem.rsplit("-", 1)[0]: path for path in list_files(self.crashes.directory)}
        for path in newest.values():
            self._remember_crash(path)
        self.manager.add_listener(self._on_manager_event)
        # The socket first: a second reconciler on the same socket must refuse
        # before it touches (adopts, restarts) any collector.
        try:
            await self._start_servers()
        except ReconcilerError as exc:
            log.error("%s: %s", exc.code, exc.message)
            await self._stop_servers()
            return 1
        await self.adopt(load_state(self.state_path, on_error=self._state_file_error))
        log.info(
            "reconciler %s (pid %d) watching %s; state in %s",
            __version__,
            os.getpid(),
            self.source.specs_dir,
            self.state_dir,
        )
        notifier = asyncio.create_task(self._notify_when_ready())
        try:
            await run_until(self.reconciler, self.stop_requested, keep_collectors=self._keeps)
        finally:
            notifier.cancel()
            if self._crash_handle is not None:
                self._crash_handle.cancel()
            self._write_crashes()
            if self._save_handle is not None:
                self._save_handle.cancel()
            self._save_state()
            await self._stop_servers()
        if self._keeps():
            log.info("stopped; collectors keep running for the next reconciler to adopt")
        else:
            log.info("stopped")
        return 0

    async def _start_servers(self) -> None:
        settings = self.config.reconciler
        self.api = ApiServer(
            self.reconciler,
            socket_path=settings.socket_path,
            reload=self._reload_from_api,
            control_group=settings.control_group,
        )
        await self.api.start()
        log.info("control API on %s", settings.socket_path)
        host, port = await self.metrics.start()
        log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", host, port)

    async def _stop_servers(self) -> None:
        await self.metrics.stop()
        if self.api is not None:
            await self.api.stop()
            self.api = None

    def _reload_from_api(self) -> None:
        self.reload_or_raise()

    def _keeps(self) -> bool:
        return self.config.reconciler.on_exit == "keep"

    async def _notify_when_ready(self) -> None:
        await self.reconciler.ready.wait()
        sd_notify("READY=1", f"STATUS=reconciling {len(self.reconciler.snapshot.specs)} specs")

    def _handle_signals(self) -> None:
        """Handlers for every signal DESIGN gives a meaning to, before anything else is done.

        As PID 1 (the container image's entrypoint) the kernel drops every
        signal this process has no handler for: a SIGTERM during start-up
        (servers, adoption) would be lost, and the runtime would SIGKILL the
        reconciler and its collectors at the end of its grace period; a SIGINT
        would raise KeyboardInterrupt. Elsewhere the default action would end
        the daemon without stopping a collector. A stop asked for early is
        acted on once start-up is done (``run_until`` finds the event set).
        Orphans (PID 1 inherits every one in its namespace) are reaped on
        SIGCHLD by the process driver's exit watcher.
        """
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _request_stop(self, name: str) -> None:
        sd_notify("STOPPING=1")
        log.info("%s received: stopping", name)
        self.stop_requested.set()


def freeze_startup_objects() -> None:
    """Put what the imports made out of the garbage collector's reach: the daemon's
    process only (``run()``), as ``gc.freeze`` is process-wide.

    Modules, classes, functions and the spec models' validators, ~38 000
    objects, live as long as the process. Left in the oldest generation, a
    full collection traced them all again: 22 ms in the event loop, once in
    100 crash restarts of a 200-collector fleet (measured with gc.callbacks),
    so one crash in a hundred waited that long for its replacement. Frozen, a
    full collection traces what the daemon made since (~11 600 objects at
    200 collectors), and none ran in the same 100 restarts. Nothing frozen
    is ever garbage: what the specs and the processes make comes later.
    """
    gc.freeze()


def run(options: RunOptions) -> int:
    setup_logging(options.log_format, options.log_level)
    freeze_startup_objects()
    try:
        daemon = Daemon(options)
    except InvalidSpec as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    return asyncio.run(daemon.run())
