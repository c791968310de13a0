"""Size-based rotation of collector log files, without routing output through the reconciler.

A collector with ``log = "file"`` writes straight to ``<log_dir>/<id>.log``
through a file descriptor opened with ``O_APPEND`` before exec (see
``reconciler.process.spawn``); the reconciler keeps no descriptor to it, so
the output survives a reconciler restart. Such a file cannot be rotated by
renaming it (the collector would go on writing to the renamed file), so this
module rotates copytruncate-style, as logrotate's ``copytruncate`` does: copy
the content to ``<id>.log.1``, then truncate the original to zero length.
Because every writer holds the file with ``O_APPEND``, its next write lands at
the new end of file, offset 0, with no hole before it.

Called by the reconcile loop on a timer, with ``log_max_bytes`` and
``log_backups`` from the ``[reconciler]`` table. Plain blocking filesystem
code: the caller runs it in a worker thread if it must not block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
PREVIOUS_SUFFIX = ".previous.log"
"""The run before the current one (``reconciler logs --previous``): never rotated."""


def backup_path(path: Path, number: int) -> Path:
    """The ``number``-th backup of ``path``: ``<id>.log.1`` is the newest."""
    return path.with_name(f"{path.name}.{number}")


def rotate_if_needed(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``; whether it was rotated.

    Backups shift up (``.1`` -> ``.2`` ...), those beyond ``backups`` are
    removed (also any left from a larger ``backups`` setting), the content is
    copied to ``.1`` and the file is truncated to zero length. With
    ``backups = 0`` the file is only truncated. A missing file is not an error
    (the collector has not written yet, or its spec is gone).

    Trade-off, as with logrotate's ``copytruncate``: whatever a collector
    writes between the end of the copy and the truncation is lost. The copy
    reads up to the end of the file and the truncation follows at once through
    the same descriptor, so the window is the time of one system call; the
    alternative, sending output through the reconciler, would lose everything
    whenever the reconciler restarts.

    A writer without ``O_APPEND`` would keep its old offset and leave a sparse
    hole at the start of the truncated file; the process manager always opens
    log files with ``O_APPEND``.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0 (got {max_bytes})")
    if backups < 0:
        raise ValueError(f"backups must be >= 0 (got {backups})")
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError:
        return False
    if size_bytes <= max_bytes:
        return False
    try:
        # O_NOFOLLOW: never truncate what a planted symlink points to (we may run as root).
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    with open(fd, "r+b", buffering=0) as log:
        _drop_old_backups(path, keep=backups)
        if backups == 0:
            os.ftruncate(fd, 0)
            return True
        _shift_backups(path, backups=backups)
        # Written beside the backup and renamed into place: a reader never sees half a copy.
        partial = path.with_name(f".{path.name}.1.partial")
        mode = os.fstat(fd).st_mode & 0o777
        try:
            with open(
                os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode),
                "wb",
                buffering=0,  # every byte written once copyfileobj returns: none left to flush
            ) as copy:
                _copy_tail(log, copy, max_bytes=max_bytes)
                # Straight after the copy's last read: lines written in between are lost.
                os.ftruncate(fd, 0)
        except BaseException:
            # A failed copy (a full disk) leaves the log untouched and no stray partial.
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    os.replace(partial, backup_path(path, 1))
    return True


COPY_CHUNK_BYTES = 1 << 20


def _copy_tail(log: BinaryIO, copy: BinaryIO, *, max_bytes: int) -> None:
    """Copy the newest ``max_bytes`` at most: a backup is never larger than the limit.

    Reads on to the end of file as the collector keeps writing (so that the
    window before the truncation stays one read long), but never past
    ``max_bytes`` in all: a collector that floods its output loses the middle
    of the flood, not the disk.
    """
    end = os.fstat(log.fileno()).st_size
    start = max(0, end - max_bytes)
    mid_line = False
    if start:
        log.seek(start - 1)
        mid_line = log.read(1) != b"\n"
    log.seek(start)
    copied = 0
    while copied < max_bytes:
        chunk = log.read(min(COPY_CHUNK_BYTES, max_bytes - copied))
        if not chunk:
            return
        if mid_line and not copied:
            # Cut at a line: the backup starts with a whole line where there is one.
            newline = chunk.find(b"\n")
            if 0 <= newline < len(chunk) - 1:
                copied += newline + 1
                chunk = chunk[newline + 1 :]
        copy.write(chunk)
        copied += len(chunk)


def _trim_to_tail(path: Path, *, max_bytes: int) -> bool:
    """Cut a file no one writes down to its newest ``max_bytes``; whether it was cut."""
    if path.stat().st_size <= max_bytes:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    partial = path.with_name(f".{path.name}.partial")
    with open(fd, "rb", buffering=0) as log:
        mode = os.fstat(fd).st_mode & 0o777
        try:
            with open(
                os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode),
                "wb",
                buffering=0,
            ) as copy:
                _copy_tail(log, copy, max_bytes=max_bytes)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    os.replace(partial, path)
    return True


def any_log_over(log_dir: Path, *, max_bytes: int) -> bool:
    """Whether some log in ``log_dir`` is past ``max_bytes``: one ``stat`` per file."""
    try:
        with os.scandir(log_dir) as entries:
            for entry in entries:
                if entry.name.endswith(LOG_SUFFIX) and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_size > max_bytes:
                            return True
    except OSError:
        return False
    return False


def rotate_all(log_dir: Path, *, max_bytes: int, backups: int) -> list[Path]:
    """Rotate every ``*.log`` directly in ``log_dir`` that needs it; the rotated ones.

    One file that cannot be rotated (permissions, a full disk) is logged and
    skipped, so that it does not keep the others from being rotated. A missing
    ``log_dir`` means no collector has logged yet: nothing to do.
    """
    rotated: list[Path] = []
    try:
        entries = sorted(log_dir.iterdir())
    except FileNotFoundError:
        return rotated
    for path in entries:
        if path.suffix != LOG_SUFFIX or path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith(PREVIOUS_SUFFIX):
            # The run before: no one writes it any more; no backups, its newest part kept.
            try:
                if _trim_to_tail(path, max_bytes=max_bytes):
                    rotated.append(path)
            except OSError as exc:
                logger.warning("cannot trim %s: %s", path, exc)
            continue
        try:
            if rotate_if_needed(path, max_bytes=max_bytes, backups=backups):
                rotated.append(path)
        except OSError as exc:
            logger.warning("cannot rotate log file %s: %s", path, exc)
    return rotated


def _shift_backups(path: Path, *, backups: int) -> None:
    # Oldest first, so that each rename has a free target; the one at `backups`
    # is overwritten, which is how the oldest is dropped.
    for number in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(backup_path(path, number), backup_path(path, number + 1))


def _drop_old_backups(path: Path, *, keep: int) -> None:
    numbered = re.compile(re.escape(path.name) + r"\.([0-9]+)")
    for entry in path.parent.iterdir():
        match = numbered.fullmatch(entry.name)
        if match is not None and int(match.group(1)) > keep:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
