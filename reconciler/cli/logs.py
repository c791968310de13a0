"""``reconciler logs ID [-f] [-n N] [--previous]``: a collector's log file, as ``kubectl logs``.

A collector with ``log = "file"`` writes ``<state_dir>/logs/<id>.log`` itself
(``reconciler.process.spawn`` opens it before exec); at each start the
previous run's non-empty file becomes ``<id>.previous.log``, and while it runs
``reconciler.process.logs`` rotates it by size copytruncate-style: the content
is copied to ``<id>.log.1`` (older backups shift to ``.2`` ...), then the file
is truncated in place. This command reads those files; output never flows
through the daemon, so neither does this command's.

What it asks the daemon (``GET /api/v1/collectors/{id}``): that the id exists,
its ``log`` mode (from the spec it reports) and when its process started (which
rotated backups belong to the current run). Where the file is comes from
``log_file_of``, the one place that knows: the API's ``log_file`` field once it
has one, until then ``<state_dir>/logs/<id>.log`` with ``state_dir`` from
``--state-dir``, ``--config`` or the default. With no daemon to ask, an
existing file there is still shown, with a note: collector output outlives
the reconciler, and so must the way to read it.

``-f`` polls (``FOLLOW_POLL_SECONDS``), as ``tail -F`` does, and keeps going
across both kinds of rotation: a rename (a new ``<id>.log`` at a restart) is
seen as a new inode, the old file is read to its end first; a truncation
(copytruncate) is seen as a shorter file or changed bytes before the read
offset, and what was written between the last poll and the truncation is
taken from the fresh ``<id>.log.1``, found after the last bytes printed.

Imports only the standard library and the CLI's own client: a client command
must stay quick (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.cli.client import (
    Client,
    ClientFailure,
    Unreachable,
    client_command,
    collector_path,
    socket_argument,
)
from reconciler.cli.common import EXIT_ERROR, EXIT_OK

DEFAULT_STATE_DIR = Path("/var/lib/reconciler")
"""``ReconcilerSettings.state_dir``'s default, here so that this command imports no pydantic
(a test keeps the two equal)."""
LOG_DIR_NAME = "logs"
LOG_SUFFIX = ".log"
"""``reconciler.process.logs.LOG_SUFFIX``: the process layer imports psutil, too slow here."""
PREVIOUS_SUFFIX = ".previous.log"
"""``reconciler.process.spawn.previous_log``: the run before the current one."""

FOLLOW_POLL_SECONDS = 0.1
FOLLOW_LINES = 10
"""``-f`` without ``-n`` starts with the last 10 lines, as ``tail -f`` and ``journalctl -f``."""
ANCHOR_BYTES = 1024
"""How much of what was last printed is kept, to find the place again after a truncation."""
BACKUP_WAIT_SECONDS = 1.0
"""After a truncation, how long to wait for its backup (renamed into place just after it)."""
READ_CHUNK_BYTES = 1 << 16

EPILOG = f"""\
Without -n, the whole log of the current run is printed: <id>.log and, before it,
its backups rotated by size during this run (<id>.log.N), oldest first, as
`kubectl logs` does; with -f, the last {FOLLOW_LINES} lines, then new lines as they come
(as `journalctl -f` and `tail -f`), until interrupted. -f keeps following across
log rotation and collector restarts. --previous prints <id>.previous.log, the run
before the current one (kept at each start, like `kubectl logs --previous`).

Only collectors with log = "file" have a log file; "inherit" output goes where the
reconciler's own output goes (journalctl -u reconciler, kubectl logs), "null" is
discarded. The files are <state_dir>/logs/<id>.log: give --state-dir or --config
when the reconciler does not run with the default state_dir ({DEFAULT_STATE_DIR})."""


class EpilogFormatter(argparse.HelpFormatter):
    """argparse's help, except that a text of several lines (an epilog) keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = EpilogFormatter
    parser.epilog = EPILOG
    parser.add_argument("id", metavar="ID", help="collector id")
    parser.add_argument(
        "-n",
        "--lines",
        type=_line_count,
        metavar="N",
        help=f'only the last N lines ("all": every one; default: all, or {FOLLOW_LINES} with -f)',
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines as they are written"
    )
    mode.add_argument(
        "--previous",
        action="store_true",
        help="the log of the run before the current one (<id>.previous.log)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the reconciler's state_dir, where logs/ is (default: from --config, "
        f"else {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the reconciler's config file (reconciler run --config): its state_dir",
    )
    socket_argument(parser)


ALL_LINES = -1
"""``-n all``: told apart from no ``-n`` at all, which means all but 10 with ``-f``."""


def _line_count(text: str) -> int:
    if text == "all":
        return ALL_LINES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be a number of lines or "all" (got {text!r})')
    return value


# --- where the log is ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFiles:
    """One collector's log files, and what is known of its current run."""

    collector_id: str
    path: Path
    """``<id>.log``: the current run's output since its last rotation."""
    run_started: float | None
    """Unix time the current run began; backups older than this are an earlier run's."""

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name.removesuffix(LOG_SUFFIX) + PREVIOUS_SUFFIX)

    def backups(self) -> list[Path]:
        """This run's rotated backups, newest (``.1``) first."""
        found: list[Path] = []
        number = 1
        while True:
            backup = self.path.with_name(f"{self.path.name}.{number}")
            try:
                modified = backup.stat().st_mtime
            except FileNotFoundError:
                return found
            if self.run_started is not None and modified < self.run_started:
                return found  # written before this run began: an earlier run's, as are older ones
            found.append(backup)
            number += 1


def log_file_of(collector: dict[str, Any], args: argparse.Namespace) -> Path:
    """Where the daemon writes this collector's log.

    The one place to change when the control API says it: its ``log_file``
    field is used as soon as it is there; until then the path is computed as
    the daemon does, from the state_dir this command is told or defaults to.
    """
    reported = collector.get("log_file")
    if isinstance(reported, str) and reported:
        return Path(reported)
    return _state_dir(args) / LOG_DIR_NAME / f"{collector['id']}{LOG_SUFFIX}"


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is None:
        return DEFAULT_STATE_DIR
    import tomllib

    try:
        with Path(args.config).open("rb") as config:
            data = tomllib.load(config)
    except OSError as exc:
        raise ClientFailure(f"{args.config}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ClientFailure(f"{args.config}: not valid TOML: {exc}") from exc
    table = data.get("reconciler", {})
    state_dir = table.get("state_dir") if isinstance(table, dict) else None
    if state_dir is None:
        return DEFAULT_STATE_DIR
    if not isinstance(state_dir, str):
        raise ClientFailure(f"{args.config}: reconciler.state_dir: must be a string")
    # Relative to the current directory, as `reconciler run` resolves it from its own.
    return Path(state_dir)


def _no_file_reason(collector: dict[str, Any]) -> str | None:
    """Why this collector has no log file to read, or ``None`` if it has one."""
    collector_id = collector["id"]
    spec = collector.get("spec")
    if not isinstance(spec, dict):
        error = collector.get("spec_error") or "no spec"
        return f"{collector_id}: no valid spec, so no log (INVALID_SPEC: {error})"
    mode = spec.get("log", "file")
    if mode == "inherit":
        return (
            f'{collector_id}: log = "inherit": its output goes to the reconciler\'s own '
            "stdout and stderr, not to a file; read it where the reconciler's output goes "
            "(journalctl -u reconciler, kubectl logs, the terminal of `reconciler run`)"
        )
    if mode == "null":
        return (
            f'{collector_id}: log = "null": its output is discarded; set log = "file" in '
            "its spec to keep it"
        )
    return None


# --- the command ---------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a collector's log file; with ``-f``, keep following it."""

    def talk(client: Client) -> int:
        try:
            collector = client.call("GET", collector_path(args.id))
        except Unreachable as exc:
            files = LogFiles(args.id, log_file_of({"id": args.id}, args), run_started=None)
            if not files.path.exists() and not (args.previous and files.previous.exists()):
                raise
            print(f"{exc}; reading {files.path.parent} without it", file=sys.stderr)
            return show(_with_previous_bound(files), args)
        reason = _no_file_reason(collector)
        if reason is not None:
            print(reason, file=sys.stderr)
            return EXIT_ERROR
        start_time = collector.get("start_time")
        files = LogFiles(
            args.id,
            log_file_of(collector, args),
            run_started=float(start_time) if isinstance(start_time, int | float) else None,
        )
        return show(_with_previous_bound(files), args)

    return client_command(args, talk)


def _with_previous_bound(files: LogFiles) -> LogFiles:
    """With no process to date the run, it began after the previous run's last write."""
    if files.run_started is not None:
        return files
    try:
        ended = files.previous.stat().st_mtime
    except FileNotFoundError:
        return files
    return LogFiles(files.collector_id, files.path, run_started=ended)


def show(files: LogFiles, args: argparse.Namespace) -> int:
    """Print what ``args`` ask of ``files``; the exit code."""
    out = sys.stdout.buffer
    if args.previous:
        try:
            fd = _open(files.previous)
        except FileNotFoundError:
            print(
                f"{files.collector_id}: no previous run's log ({files.previous} does not exist: "
                "the collector has not been restarted since it first logged)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        with open(fd, "rb", buffering=0) as previous:
            _print_tail([previous], _lines_wanted(args), out)
        return EXIT_OK
    lines = _lines_wanted(args)
    try:
        fd = _open(files.path)
    except FileNotFoundError:
        if not args.follow:
            print(_missing(files), file=sys.stderr)
            return EXIT_ERROR
        print(f"{_missing(files)}; waiting for it", file=sys.stderr)
        return _follow(Follower(files.path, out), FOLLOW_POLL_SECONDS)
    with contextlib.ExitStack() as stack:
        current = stack.enter_context(open(fd, "rb", buffering=0))
        backups = []
        for path in files.backups():
            with contextlib.suppress(FileNotFoundError):  # rotated away meanwhile
                backups.append(stack.enter_context(open(_open(path), "rb", buffering=0)))
        # The current file first: what is printed of it is where -f goes on from.
        tail = _print_tail([current, *backups], lines, out)
        if not args.follow:
            return EXIT_OK
        follower = Follower(files.path, out)
        follower.adopt(os.dup(fd), offset=current.tell(), anchor=tail)
    return _follow(follower, FOLLOW_POLL_SECONDS)


def _lines_wanted(args: argparse.Namespace) -> int | None:
    """How many lines to print first: ``None`` for all of them."""
    if args.lines is None:
        return FOLLOW_LINES if args.follow else None
    return None if args.lines == ALL_LINES else int(args.lines)


def _missing(files: LogFiles) -> str:
    return (
        f"{files.collector_id}: no log file at {files.path} (the collector has not run yet, "
        "or the reconciler's state_dir is elsewhere: give --state-dir or --config)"
    )


def _follow(follower: Follower, poll_seconds: float) -> int:
    try:
        while True:
            follower.poll()
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return 130
    finally:
        follower.close()


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


# --- reading -------------------------------------------------------------------------------


def _print_tail(files: list[BinaryIO], lines: int | None, out: BinaryIO) -> bytes:
    """Print the last ``lines`` lines of ``files``, every line if ``lines`` is None.

    ``files`` are newest first: the lines run on from the last file to the first.
    The first file is left at its end, and the last ``ANCHOR_BYTES`` before that
    end are returned, printed or not: where ``-f`` goes on from.
    """
    starts = [0] * len(files)
    if lines is not None:
        wanted = lines
        for index, stream in enumerate(files):
            starts[index], found = _tail_start(stream, wanted)
            wanted -= found
            if wanted <= 0:
                files = files[: index + 1]
                break
    anchor = b""
    for index in range(len(files) - 1, -1, -1):
        stream = files[index]
        if index == 0:
            # Read with the printed part, so that the anchor is of the same content.
            stream.seek(max(0, starts[0] - ANCHOR_BYTES))
            anchor = stream.read(starts[0] - stream.tell())
        stream.seek(starts[index])
        while chunk := stream.read(READ_CHUNK_BYTES):
            out.write(chunk)
            if index == 0:
                anchor = (anchor + chunk)[-ANCHOR_BYTES:]
    out.flush()
    return anchor


def _tail_start(stream: BinaryIO, wanted: int) -> tuple[int, int]:
    """Where the last ``wanted`` lines of ``stream`` begin, and how many lines that is
    (fewer than ``wanted`` when the file has fewer: then it begins at 0).

    An unterminated last line counts as a line. Read backwards in chunks: a 10 MiB
    log costs only what is printed.
    """
    end = stream.seek(0, os.SEEK_END)
    if wanted == 0 or end == 0:
        return end, 0
    position = end
    found = 0
    skip_last_newline = True
    while position > 0:
        size = min(READ_CHUNK_BYTES, position)
        position -= size
        stream.seek(position)
        chunk = stream.read(size)
        cut = len(chunk)
        if skip_last_newline:
            skip_last_newline = False
            if chunk.endswith(b"\n"):
                cut -= 1
        while True:
            newline = chunk.rfind(b"\n", 0, cut)
            if newline < 0:
                break
            found += 1
            if found == wanted:
                return position + newline + 1, found
            cut = newline
    return 0, found + 1


class Follower:
    """``tail -F`` for one log file name: new bytes as they come, across rotations."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path = path
        self.out = out
        self.backup = path.with_name(f"{path.name}.1")
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._anchor = b""
        self._backup_identity = _identity_of(self.backup)

    def adopt(self, fd: int, *, offset: int, anchor: bytes) -> None:
        """Go on from ``offset`` in the open ``fd``, whose last printed bytes were ``anchor``."""
        self.close()
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self._offset, self._anchor = offset, anchor

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> None:
        """Print whatever is new since the last poll."""
        if self._fd is None:
            try:
                self.adopt(_open(self.path), offset=0, anchor=b"")
            except FileNotFoundError:
                return
        assert self._fd is not None
        if self._truncated(self._fd):
            self._recover_from_backup()
            self._offset, self._anchor = 0, b""
        self._drain()
        current = _identity_of(self.path)
        if current is not None and current != self._identity:
            # Renamed away and replaced (a restart keeps the old file as <id>.previous.log):
            # the old file's last lines first, then the new file from its start.
            self._drain()
            try:
                fd = _open(self.path)
            except FileNotFoundError:
                return
            self.adopt(fd, offset=0, anchor=b"")
            self._drain()
        self._backup_identity = _identity_of(self.backup)

    def _truncated(self, fd: int) -> bool:
        size = os.fstat(fd).st_size
        if size < self._offset:
            return True
        if size == self._offset or not self._anchor:
            return False
        # Grown: but truncated and written again since? Then the bytes before the offset changed.
        start = self._offset - len(self._anchor)
        return os.pread(fd, len(self._anchor), start) != self._anchor

    def _recover_from_backup(self) -> None:
        """Print what was written between the last poll and a copytruncate rotation.

        The rotation copies the file's tail to ``<id>.log.1`` before truncating it
        and renames that copy into place just after: wait for it briefly (there is
        none with ``log_backups = 0``), then print what follows the last bytes
        printed. A new backup without them means that more than a whole backup was
        written between two polls: all of it is new, the lines before it are gone.
        """
        deadline = time.monotonic() + BACKUP_WAIT_SECONDS
        read_identity: tuple[int, int] | None = None
        data = b""
        while True:
            identity = _identity_of(self.backup)
            if identity is not None and identity != read_identity:
                with contextlib.suppress(FileNotFoundError):
                    data = self.backup.read_bytes()
                    read_identity = identity
                new = _after(self._anchor, data)
                if new is not None:
                    self._write(data[new:])
                    return
                if identity != self._backup_identity:
                    self._write(data)
                    return
            if time.monotonic() >= deadline:
                return
            time.sleep(FOLLOW_POLL_SECONDS / 5)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def _drain(self) -> None:
        assert self._fd is not None
        wrote = False
        for chunk in _chunks(self._fd, self._offset):
            self.out.write(chunk)
            self._offset += len(chunk)
            self._anchor = (self._anchor + chunk)[-ANCHOR_BYTES:]
            wrote = True
        if wrote:
            self.out.flush()


def _after(anchor: bytes, backup: bytes) -> int | None:
    """Where what follows ``anchor`` begins in ``backup``; ``None`` if it is not there.

    The backup holds the newest ``log_max_bytes`` of the file, cut at a line: it
    may begin inside the anchor, with one of the anchor's last lines.
    """
    found = backup.find(anchor)
    if found >= 0:
        return found + len(anchor)
    start = anchor.find(b"\n") + 1
    while 0 < start < len(anchor):
        if backup.startswith(anchor[start:]):
            return len(anchor) - start
        start = anchor.find(b"\n", start) + 1
    return None


def _chunks(fd: int, offset: int) -> Iterator[bytes]:
    while chunk := os.pread(fd, READ_CHUNK_BYTES, offset):
        offset += len(chunk)
        yield chunk


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
