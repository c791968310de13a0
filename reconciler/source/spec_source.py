"""``SpecSource``: the specs directory as a stream of snapshots, for the reconcile loop.

``scan()`` reads the directory once. ``watch()`` yields a snapshot whenever the
directory's content changed, driven by three triggers, all of which mean only
"look again" (level-triggered: event kinds and paths are never used):

- inotify (``inotify_simple``) on the specs directory, non-recursively, read
  by the event loop itself when the kernel has an event: an edit is seen at
  once, and nothing runs while nothing changes (no thread, no timer). A ConfigMap update
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

from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from reconciler.source.scan import Scanner, WatchTarget
from reconciler.source.snapshot import SpecSnapshot

logger = logging.getLogger(__name__)

_WATCH_MASK = (
    inotify_flags.CREATE
    | inotify_flags.DELETE
    | inotify_flags.MODIFY
    | inotify_flags.CLOSE_WRITE
    | inotify_flags.ATTRIB
    | inotify_flags.MOVED_FROM
    | inotify_flags.MOVED_TO
    | inotify_flags.DELETE_SELF
    | inotify_flags.MOVE_SELF
)
"""Every change a directory entry can see; each only means "look again"."""

_FULL_RESCAN_EVERY = 10
"""Of the timed rescans, every this many reads every file in full; the others stat only."""

_SCAN_SPACING_FACTOR = 10.0
"""After a notified scan that took d seconds, the next starts no sooner than 10·d
later: a steady stream of events costs at most ~10 % of a core in scans."""
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
        require_safe_permissions: bool | None = None,
        min_snapshot_interval_seconds: float = 0.25,
    ) -> None:
        if rescan_interval_seconds <= 0:
            raise ValueError("rescan_interval_seconds must be positive")
        if require_safe_permissions is None:
            require_safe_permissions = os.geteuid() == 0
        self._scanner = Scanner(Path(specs_dir), require_safe_permissions=require_safe_permissions)
        self._rescan_interval_seconds = rescan_interval_seconds
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
        pace = _Pacing(self._min_snapshot_interval_seconds)
        timed_rescans = 0
        try:
            # The watch starts first (on the specs directory), then the first scan:
            # nothing written meanwhile is missed, and no scan before it is needed.
            # A scan that finds symlink targets elsewhere rewatches and scans again.
            snapshot = self._scanner.snapshot
            while not stop.is_set():
                if _must_restart(watcher, self._scanner.watch_targets, now=loop.time()):
                    if watcher is not None:
                        await watcher.close()
                    watcher = await _Watcher.start(self._scanner.watch_targets, wake)
                    # whatever changed while no watch was in place is seen now
                    snapshot = await asyncio.to_thread(self.scan)
                    continue
                if snapshot.generation != pace.yielded.generation:
                    hold = pace.hold_seconds(snapshot, now=loop.time())
                    if hold > 0:
                        await _wait_any(stop, timeout=hold)
                        snapshot = await asyncio.to_thread(self._scanner.scan)
                        if snapshot.generation == pace.yielded.generation or stop.is_set():
                            continue
                    pace.yielding(snapshot, now=loop.time())
                    yield snapshot
                    continue
                timeout = self._rescan_interval_seconds
                if watcher is not None and watcher.failed:
                    timeout = min(timeout, _WATCH_RETRY_SECONDS)
                await _wait_any(wake, stop, timeout=timeout)
                woken = wake.is_set()
                if woken and (delay := pace.scan_delay(now=loop.time())) > 0:
                    await _wait_any(stop, timeout=delay)
                wake.clear()
                if not stop.is_set():
                    # A timed rescan with nothing notified: stat only, unless it is
                    # the turn of a full pass (what no stat shows: a permission of a
                    # symlink target's directory).
                    timed_rescans = 0 if woken else timed_rescans + 1
                    quick = not woken and timed_rescans % _FULL_RESCAN_EVERY != 0
                    began = loop.time()
                    snapshot = await asyncio.to_thread(self._scanner.scan, quick=quick)
                    pace.scanned(began, loop.time(), notified=woken)
        finally:
            if watcher is not None:
                await watcher.close()


class _Pacing:
    """When the watch scans and yields, so that bursts coalesce and lone edits do not wait.

    - A notified scan starts no sooner than 10x the last one's duration after it (at
      most ``interval``): a stream of events costs at most ~10 % of a core in scans.
    - A snapshot that changes a spec the previous snapshot changed too, within
      ``interval`` of it (an editor saving in a loop, a template re-rendered), is held
      to the interval's end, and one snapshot then takes every rewrite. A snapshot of
      other specs is not held: a fixed 0.25 s between snapshots made a new spec written
      0.1 s after another wait ~150 ms.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.yielded = SpecSnapshot(generation=-1)
        self._yielded_at = -math.inf  # the first snapshot is no burst
        self._changed: set[str] = set()
        self._compared: tuple[SpecSnapshot | None, SpecSnapshot | None, set[str]] = (
            None,
            None,
            set(),
        )
        self._scanned_at = -math.inf
        self._scan_seconds = interval / _SCAN_SPACING_FACTOR

    def scan_delay(self, *, now: float) -> float:
        spacing = min(self.interval, _SCAN_SPACING_FACTOR * self._scan_seconds)
        return self._scanned_at + spacing - now

    def scanned(self, began: float, ended: float, *, notified: bool) -> None:
        self._scanned_at = ended
        if notified:
            self._scan_seconds = ended - began

    def hold_seconds(self, snapshot: SpecSnapshot, *, now: float) -> float:
        if not self._changes(snapshot) & self._changed:
            return 0.0
        return self._yielded_at + self.interval - now

    def yielding(self, snapshot: SpecSnapshot, *, now: float) -> None:
        self._changed = self._changes(snapshot)
        if self.yielded.generation >= 0:
            self._yielded_at = now
        self.yielded = snapshot

    def _changes(self, snapshot: SpecSnapshot) -> set[str]:
        """``_changed_ids`` from the last yielded snapshot, once per snapshot (it is O(specs)):
        ``hold_seconds`` and then ``yielding`` ask it of the same one."""
        old, new, changed = self._compared
        if old is not self.yielded or new is not snapshot:
            changed = _changed_ids(self.yielded, snapshot)
            self._compared = (self.yielded, snapshot, changed)
        return changed


def _changed_ids(old: SpecSnapshot, new: SpecSnapshot) -> set[str]:
    """Collector ids whose spec differs, and problem files whose problem does."""
    changed = {
        cid
        for cid in old.specs.keys() | new.specs.keys()
        if (spec := old.specs.get(cid)) is None
        or (other := new.specs.get(cid)) is None
        or spec.spec_hash != other.spec_hash
    }
    changed.update(
        name
        for name in old.problems.keys() | new.problems.keys()
        if old.problems.get(name) != new.problems.get(name)
    )
    return changed


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
    """inotify watches on a fixed set of directories; sets ``wake`` on any event.

    The inotify descriptor is read by the event loop (``add_reader``) when the
    kernel has events: no thread, no polling. A watch follows inodes, so when
    the set of directories to watch changes (the specs directory appeared, was
    replaced, a symlink now points elsewhere) the watcher is replaced, never
    updated. A watch that cannot be set up (inotify limits) or that the kernel
    ends (a directory removed, the queue overflowed) marks the watcher failed:
    the source rescans every second and retries.
    """

    def __init__(self, targets: tuple[WatchTarget, ...], wake: asyncio.Event) -> None:
        self.targets = targets
        self.failed_at = math.inf
        """Loop time the watch ended without being asked to; ``inf`` while it runs."""
        self._loop = asyncio.get_running_loop()
        self._wake = wake
        self._inotify: INotify | None = None
        paths = [directory for directory, _dev, _ino in targets]
        if not paths:
            self._fail("no directory to watch")
            return
        try:
            self._inotify = INotify(nonblocking=True)
            for path in paths:
                self._inotify.add_watch(path, _WATCH_MASK)
        except OSError as exc:
            self._close_descriptor()
            self._fail(exc.strerror or str(exc))
            return
        self._loop.add_reader(self._inotify.fileno(), self._readable)

    @classmethod
    async def start(cls, targets: tuple[WatchTarget, ...], wake: asyncio.Event) -> _Watcher:
        # The watches are in place when this returns: the scan that follows misses nothing.
        return cls(targets, wake)

    @property
    def failed(self) -> bool:
        return self.failed_at != math.inf

    def _readable(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        try:
            events = inotify.read(timeout=0)
        except OSError as exc:
            self._stop_reading()
            self._fail(exc.strerror or str(exc))
            return
        ended = inotify_flags.IGNORED | inotify_flags.Q_OVERFLOW
        if any(event.mask & ended for event in events):
            # A watched directory went away, or events were lost: rescan, rewatch.
            self._stop_reading()
            self._fail("a watched directory went away or the event queue overflowed")
            return
        if events:
            self._wake.set()

    def _fail(self, reason: str) -> None:
        self.failed_at = self._loop.time()
        self._log_failure(reason)
        self._wake.set()  # the watch loop must learn that it now depends on rescans

    def _log_failure(self, reason: str) -> None:
        logger.warning(
            "cannot watch %s (%s); rescanning every %s s instead",
            ", ".join(directory for directory, _dev, _ino in self.targets) or "anything",
            reason,
            _WATCH_RETRY_SECONDS,
        )

    def _stop_reading(self) -> None:
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fileno())
        self._close_descriptor()

    def _close_descriptor(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    async def close(self) -> None:
        self._stop_reading()
