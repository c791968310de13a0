"""Crash records: what a collector left behind each time it ended without being asked to.

On every exit the spec did not ask for, the daemon writes one small JSON file
under ``<state_dir>/crashes/``: the time, the exit code or signal, how long
the run lasted, the last lines of the collector's log (``log = "file"``) and,
when ``resource_limits.core_dump = true`` allowed one, the core file's path.
Records are pruned to the newest ``KEEP_PER_COLLECTOR`` of each collector.
``reconciler crashes [ID]`` and ``reconciler status ID`` read them.

Standard library only, so that the command line can read records without
importing the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, BinaryIO

CRASH_DIR_NAME = "crashes"
KEEP_PER_COLLECTOR = 20
TAIL_LINES = 50
TAIL_BYTES = 64 * 1024
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
CORE_SIGNALS = frozenset(
    {
        signal.SIGQUIT,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGABRT,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGSEGV,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGSYS,
    }
)
"""Signals whose default action dumps core."""


class LogSnapshot:
    """A log file held open at a run's end, and its size then.

    The next run's start moves the file to ``<id>.previous.log`` and appends to a
    new one: the descriptor follows the moved file, and the size is where this
    run's output ended.
    """

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file = file
        self.size = size

    @classmethod
    def take(cls, path: Path | None) -> LogSnapshot | None:
        if path is None:
            return None
        try:
            file = path.open("rb")
        except OSError:
            return None
        try:
            return cls(file, os.fstat(file.fileno()).st_size)
        except OSError:
            file.close()
            return None


def log_tail(log: Path | LogSnapshot | None, *, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log (read from its last ``TAIL_BYTES``).

    A snapshot is read up to its size then (shorter, if rotated since), and closed.
    """
    if log is None:
        return []
    snapshot = log if isinstance(log, LogSnapshot) else LogSnapshot.take(log)
    if snapshot is None:
        return []
    try:
        with snapshot.file as file:
            size = min(snapshot.size, os.fstat(file.fileno()).st_size)
            file.seek(max(0, size - TAIL_BYTES))
            data = file.read(min(TAIL_BYTES, size))
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES and text:
        text = text[1:]  # the first line read is cut
    return text[-lines:]


def find_core(*, signal_number: int | None, cwd: str, since: float) -> str | None:
    """The core file a signal's death left, where ``core_pattern`` puts it (if it does)."""
    if signal_number not in CORE_SIGNALS:
        return None
    try:
        pattern = CORE_PATTERN.read_text().strip()
    except OSError:
        return None
    if not pattern or pattern.startswith("|"):
        return None  # piped to a helper (systemd-coredump, apport): not a file here
    where = Path(pattern if pattern.startswith("/") else os.path.join(cwd, pattern))
    prefix = where.name.split("%", 1)[0]
    try:
        candidates = [
            entry
            for entry in where.parent.iterdir()
            if entry.name.startswith(prefix) and entry.stat().st_mtime >= since - 1.0
        ]
    except OSError:
        return None
    if not candidates:
        return None
    return str(max(candidates, key=lambda entry: entry.stat().st_mtime))


class CrashRecorder:
    """Writes and prunes the records of one state dir."""

    def __init__(self, directory: Path, *, keep: int = KEEP_PER_COLLECTOR) -> None:
        self.directory = directory
        self.keep = keep
        self._files: dict[str, list[Path]] = {}
        """Each collector's record files, oldest first: listed once, then kept here,
        so that a crash loop does not list the directory on every crash."""

    def record(
        self,
        collector_id: str,
        *,
        exit_code: int | None,
        description: str,
        run_seconds: float,
        log: Path | LogSnapshot | None,
        core_dump: bool,
        cwd: str,
        wall_time: float | None = None,
    ) -> dict[str, Any]:
        """Write one record; it is returned with its ``file``."""
        when = time.time() if wall_time is None else wall_time
        signal_number = -exit_code if exit_code is not None and exit_code < 0 else None
        record: dict[str, Any] = {
            "id": collector_id,
            "time": when,
            "exit_code": exit_code if exit_code is not None and exit_code >= 0 else None,
            "signal": _signal_name(signal_number),
            "description": description,
            "run_seconds": round(run_seconds, 3),
            "log_tail": log_tail(log),
            "core_file": (
                find_core(signal_number=signal_number, cwd=cwd, since=when - run_seconds)
                if core_dump
                else None
            ),
        }
        if collector_id not in self._files:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        path = self.directory / f"{collector_id}-{int(when * 1000):015d}.json"
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, path)
        files = self._files_of(collector_id)
        if path not in files:
            files.append(path)
        self.prune(collector_id)
        record["file"] = str(path)
        return record

    def _files_of(self, collector_id: str) -> list[Path]:
        files = self._files.get(collector_id)
        if files is None:
            files = self._files[collector_id] = list_files(self.directory, collector_id)
        return files

    def prune(self, collector_id: str) -> None:
        files = self._files_of(collector_id)
        while len(files) > self.keep:
            with contextlib.suppress(FileNotFoundError):
                files.pop(0).unlink()


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _collector_of(path: Path) -> str:
    return path.stem.rsplit("-", 1)[0]


def list_files(directory: Path, collector_id: str | None = None) -> list[Path]:
    """Record files, oldest first; only ``collector_id``'s when given."""
    try:
        entries = [p for p in directory.iterdir() if p.suffix == ".json" and "-" in p.stem]
    except OSError:
        return []
    if collector_id is not None:
        entries = [p for p in entries if _collector_of(p) == collector_id]
    return sorted(entries, key=lambda p: (p.stem.rsplit("-", 1)[1], p.name))


def load(directory: Path, collector_id: str | None = None) -> list[dict[str, Any]]:
    """The records, oldest first; unreadable ones are skipped."""
    records = []
    for path in list_files(directory, collector_id):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data["file"] = str(path)
            records.append(data)
    return records
