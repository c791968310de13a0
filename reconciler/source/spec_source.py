"""``SpecSource``: the specs directory as a stream of snapshots, for the reconcile loop.

``scan()`` reads the directory once. ``watch()`` yields a snapshot whenever the
directory's content changed, driven by three triggers, all of which mean only
"look again" (level-triggered: event kinds and paths are never used):

- ``watchfiles.awatch`` (inotify) on the specs directory, non-recursively,
  tuned to deliver an edit within tens of milliseconds. A ConfigMap update
  renames ``..data_tmp`` over ``..data`` in the specs directory itself, so it
  is seen there; ``Scanner`` makes sure it is read as one change.
- Directories outside the specs directory that hold symlink targets are
  watched too, so an edit to ``/srv/git/web.toml`` behind ``web.toml`` is seen.
- A full rescan every ``rescan_interval_seconds``, a safety net for lost
  notifications and for what no watch covers (e.g. a symlinked specs directory
  re-pointed). It costs one ``stat`` per file when nothing changed.

A missing specs directory is reported as a problem, not an error: the closest
existing ancestor is watched instead, and the watch moves to the directory as
soon as it appears. If watching fails altogether (e.g. inotify limits), the
source falls back to rescanning every second and retries the watch.

Bursts are coalesced: after a snapshot is yielded, the next one waits at least
``min_snapshot_interval_seconds`` and carries the state at that moment, so 30
saves in a second give a handful of snapshots, the last one final.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncGenerator
from pathlib import Path

import watchfiles

from reconciler.source.scan import Scanner, WatchTarget
from reconciler.source.snapshot import SpecSnapshot

logger = logging.getLogger(__name__)

_STEP_MS = 20
"""How long watchfiles waits for more events before handing over a batch. Its
Rust loop also wakes this often while idle: 5 ms cost 0.6 % of a core doing
nothing, 20 ms costs 0.12 % and adds at most 15 ms to an edit's latency."""

_WATCH_RETRY_SECONDS = 1.0
"""Rescan (and retry the watch) this often while watching does not work."""


class SpecSource:
    """The specs directory: scans, watches, last-known-good specs and file problems.

    ``require_safe_permissions``: refuse spec files and directories that another
    user could write (sshd's StrictModes); ``None`` means "only when running as root".
    """

    def __init__(
        self,
        specs_dir: Path,
        *,
        rescan_interval_seconds: float = 30.0,
        debounce_ms: int = 20,
        require_safe_permissions: bool | None = None,
        min_snapshot_interval_seconds: float = 0.25,
    ) -> None:
        if rescan_interval_seconds <= 0:
            raise ValueError("rescan_interval_seconds must be positive")
        if debounce_ms < 1:
            raise ValueError("debounce_ms must be at least 1")
        if require_safe_permissions is None:
            require_safe_permissions = os.geteuid() == 0
        self._scanner = Scanner(Path(specs_dir), require_safe_permissions=require_safe_permissions)
        self._rescan_interval_seconds = rescan_interval_seconds
        self._debounce_ms = debounce_ms
        self._min_snapshot_interval_seconds = min_snapshot_interval_seconds

    @property
    def specs_dir(self) -> Path:
        return self._scanner.specs_dir

    @property
    def snapshot(self) -> SpecSnapshot:
        """The last snapshot published by ``scan`` or ``watch`` (empty before the first scan)."""
        return self._scanner.snapshot

    def scan(self) -> SpecSnapshot:
        """Read the whole directory now; cheap (``stat`` only) when nothing changed."""
        return self._scanner.scan()

    async def watch(
        self, *, stop_event: asyncio.Event | None = None
    ) -> AsyncGenerator[SpecSnapshot, None]:
        """Yield the current snapshot, then every snapshot that differs from the last one.

        Runs until cancelled or until ``stop_event`` is set. Use it with
        ``contextlib.aclosing`` so that the watch stops when the loop stops
        iterating.
        """
        stop = stop_event if stop_event is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher: _Watcher | None = None
        yielded_generation: int | None = None
        yielded_at = -math.inf
        try:
            snapshot = await asyncio.to_thread(self.scan)
            while not stop.is_set():
                if _must_restart(watcher, self._scanner.watch_targets, now=loop.time()):
                    if watcher is not None:
                        await watcher.close()
                    watcher = await _Watcher.start(
                        self._scanner.watch_targets, wake, debounce_ms=self._debounce_ms
                    )
                    # whatever changed while no watch was in place is seen now
                    snapshot = await asyncio.to_thread(self.scan)
                    continue
                if snapshot.generation != yielded_generation:
                    if yielded_generation is not None:
                        yielded_at = loop.time()  # the first snapshot is no burst
                    yielded_generation = snapshot.generation
                    yield snapshot
                    continue
                timeout = self._rescan_interval_seconds
                if watcher is not None and watcher.failed:
                    timeout = min(timeout, _WATCH_RETRY_SECONDS)
                await _wait_any(wake, stop, timeout=timeout)
                if wake.is_set():
                    # coalesce a burst: events keep arriving while we wait; one scan takes them all
                    delay = yielded_at + self._min_snapshot_interval_seconds - loop.time()
                    if delay > 0:
                        await _wait_any(stop, timeout=delay)
                wake.clear()
                if not stop.is_set():
                    snapshot = await asyncio.to_thread(self.scan)
        finally:
            if watcher is not None:
                await watcher.close()


def _must_restart(
    watcher: _Watcher | None, targets: tuple[WatchTarget, ...], *, now: float
) -> bool:
    if watcher is None or watcher.targets != targets:
        return True
    return watcher.failed and now >= watcher.failed_at + _WATCH_RETRY_SECONDS


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class _Watcher:
    """One ``watchfiles.awatch`` over a fixed set of directories; sets ``wake`` on any event.

    A watch follows inodes, so when the set of directories to watch changes
    (the specs directory appeared, was replaced, a symlink now points
    elsewhere) the watcher is replaced, never updated.
    """

    def __init__(
        self, targets: tuple[WatchTarget, ...], wake: asyncio.Event, *, debounce_ms: int
    ) -> None:
        self.targets = targets
        self.failed_at = math.inf
        """Loop time the watch ended without being asked to; ``inf`` while it runs."""
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(wake, debounce_ms=debounce_ms))
        self._task.add_done_callback(lambda _task: self._ended(wake))

    @classmethod
    async def start(
        cls, targets: tuple[WatchTarget, ...], wake: asyncio.Event, *, debounce_ms: int
    ) -> _Watcher:
        watcher = cls(targets, wake, debounce_ms=debounce_ms)
        # Let the task run up to its first real wait: by then watchfiles has
        # set up its inotify watches, so the scan that follows misses nothing.
        await asyncio.sleep(0)
        return watcher

    @property
    def failed(self) -> bool:
        return self.failed_at != math.inf

    def _ended(self, wake: asyncio.Event) -> None:
        if not self._stop.is_set():
            self.failed_at = asyncio.get_running_loop().time()
            wake.set()  # the watch loop must learn that it now depends on rescans

    async def _run(self, wake: asyncio.Event, *, debounce_ms: int) -> None:
        paths = [directory for directory, _dev, _ino in self.targets]
        if not paths:
            self._log_failure("no directory to watch")
            return
        try:
            async for _changes in watchfiles.awatch(
                *paths,
                # every event counts: even an ignored name may be a rename onto a spec
                watch_filter=None,
                debounce=debounce_ms,
                step=min(_STEP_MS, debounce_ms),
                stop_event=self._stop,
                recursive=False,
                force_polling=False,
            ):
                wake.set()
        except Exception as exc:
            # whatever went wrong (a directory gone, inotify limits), rescans take over
            self._log_failure(str(exc) or type(exc).__name__)

    def _log_failure(self, reason: str) -> None:
        logger.warning(
            "cannot watch %s (%s); rescanning every %s s instead",
            ", ".join(directory for directory, _dev, _ino in self.targets) or "anything",
            reason,
            _WATCH_RETRY_SECONDS,
        )

    async def close(self) -> None:
        self._stop.set()
        # watchfiles checks the stop event every step, so this is quick
        await asyncio.wait([self._task])
