"""What every example collector shares: arguments, the sampling loop, signals, output.

A collector module (``procmond``, ``netmond``, ``diskmond``) describes itself
with a ``Collector`` (name, its own arguments, how to build its sampler), and
its ``main`` calls ``run``. The behaviour a supervisor relies on lives here,
once:

- stdout: one JSON object per sample, one per line, starting with ``ts``
  (ISO-8601 UTC, milliseconds) and ``collector``; each line goes out in one
  ``write`` as soon as it is made, so lines are never held in a buffer, split,
  or interleaved with stderr in a shared log file;
- SIGTERM and SIGINT: exit code 0 once the sample being taken is written,
  never in the middle of a line, and without a traceback;
- bad arguments: exit code 2 and one line on stderr;
- a sample that fails: one line on stderr, and exit code 1 after
  ``MAX_CONSECUTIVE_FAILURES`` in a row, so that the supervisor's restart and
  backoff policy sees a collector that no longer works;
- ``--health-file``: touched after every sample written, so that a liveness
  probe can tell a collector that samples from one that merely exists; the
  probe itself is ``--check-health-file`` (exit 0 while the file is fresh).

Standard library only: the collectors are standalone programs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn, Protocol

DEFAULT_INTERVAL_SECONDS = 5.0
WARM_UP_MAX_SECONDS = 1.0
"""The first sample of a collector that reports rates or deltas comes this long
(or one interval, when shorter) after its baseline, so that ``--once`` and a
fresh start answer quickly; ``elapsed_seconds`` in its lines says how long the
window really was."""
MAX_CONSECUTIVE_FAILURES = 3
HEALTH_MAX_AGE_INTERVALS = 3
"""``--check-health-file`` default: a file older than this many intervals is stale."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STDOUT_FD = 1

Record = dict[str, object]
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Sampler(Protocol):
    """Takes one sample. Made once per run, so it may keep a baseline between calls."""

    def sample(self) -> Record:
        """The collector's data; ``ts``, ``collector`` and ``host`` are added by the runner."""
        ...


@dataclass(frozen=True, slots=True)
class Collector:
    """One collector program: what ``run`` needs to know about it."""

    name: str
    description: str
    create_sampler: Callable[[argparse.Namespace], Sampler]
    """Called with the parsed arguments; may raise ``UsageError`` for bad combinations."""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    needs_baseline: bool = True
    """Whether the first sample must wait for a window to measure (rates, deltas)."""

    @property
    def program(self) -> str:
        """The console script name, used in messages whatever argv[0] is."""
        return f"reconciler-{self.name}"


class UsageError(Exception):
    """Bad command-line arguments: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits by itself; a supervisor's log wants one line.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --- Argument types, also used by the collectors ----------------------------------------


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text!r})")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (got {text!r})")
    return value


def _parse(collector: Collector, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog=collector.program,
        description=collector.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--interval-seconds",
        type=positive_seconds,
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help="time between samples (default: %(default)g)",
    )
    parser.add_argument("--once", action="store_true", help="write one sample, then exit 0")
    parser.add_argument(
        "--health-file",
        type=Path,
        metavar="PATH",
        help="touch PATH after every sample written (missing directories are created); "
        "removed at start and at a clean exit",
    )
    parser.add_argument(
        "--check-health-file",
        type=Path,
        metavar="PATH",
        help="do not sample: exit 0 if PATH was touched within --max-age-seconds, else 1 "
        "(a liveness probe for a running collector's --health-file)",
    )
    parser.add_argument(
        "--max-age-seconds",
        type=positive_seconds,
        metavar="SECONDS",
        help=f"with --check-health-file (default: {HEALTH_MAX_AGE_INTERVALS} x --interval-seconds)",
    )
    if collector.add_arguments is not None:
        collector.add_arguments(parser)
    options = parser.parse_args(argv)
    if options.max_age_seconds is not None and options.check_health_file is None:
        raise UsageError("--max-age-seconds is only meaningful with --check-health-file")
    if options.check_health_file is not None and (options.once or options.health_file):
        raise UsageError("--check-health-file does not sample: drop --once and --health-file")
    return options


# --- Running ----------------------------------------------------------------------------


def run(collector: Collector, argv: Sequence[str] | None = None) -> int:
    """Run ``collector`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    with _StopSignals() as stop:
        try:
            options = _parse(collector, argv)
            if options.check_health_file is not None:
                max_age_seconds = options.max_age_seconds or (
                    HEALTH_MAX_AGE_INTERVALS * options.interval_seconds
                )
                return check_health_file(
                    options.check_health_file,
                    max_age_seconds=max_age_seconds,
                    program=collector.program,
                )
            sampler = collector.create_sampler(options)
        except UsageError as exc:
            _complain(collector.program, f"error: {exc} (see --help)")
            return 2
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        except Exception as exc:
            _complain(collector.program, f"cannot start: {_describe(exc)}")
            return 1
        return _Loop(collector, options, sampler, stop).run()


class _Loop:
    """Sample, write, touch the health file; every interval until told to stop."""

    def __init__(
        self,
        collector: Collector,
        options: argparse.Namespace,
        sampler: Sampler,
        stop: _StopSignals,
    ) -> None:
        self.collector = collector
        self.sampler = sampler
        self.stop = stop
        self.interval_seconds: float = options.interval_seconds
        self.once: bool = options.once
        self.health_file: Path | None = options.health_file
        self.host = socket.gethostname()
        self.health_file_ok = True

    def run(self) -> int:
        # A health file left by an earlier run must not vouch for this one.
        self._remove_health_file()
        try:
            return self._run()
        except BrokenPipeError:
            # Whoever read stdout has gone (`... --interval-seconds 1 | head -3`): not an error.
            return 0
        except OSError as exc:
            _complain(self.collector.program, f"cannot write a sample: {_describe(exc)}")
            return 1
        finally:
            self._remove_health_file()

    def _run(self) -> int:
        first_wait_seconds = (
            min(self.interval_seconds, WARM_UP_MAX_SECONDS) if self.collector.needs_baseline else 0
        )
        due = time.monotonic() + first_wait_seconds
        failures = 0
        while not self.stop.wait(due - time.monotonic()):
            line = self._take_sample()
            if line is None:
                failures += 1
                if self.once or failures >= MAX_CONSECUTIVE_FAILURES:
                    if not self.once:
                        _complain(
                            self.collector.program,
                            f"giving up after {failures} failed samples in a row",
                        )
                    return 1
            else:
                failures = 0
                _write_all(STDOUT_FD, line)
                self._touch_health_file()
                if self.once:
                    return 0
            # After a long pause (SIGSTOP) or a slow sample, sample once now rather than
            # catching up with a burst of samples.
            due = max(due + self.interval_seconds, time.monotonic())
        return 0

    def _take_sample(self) -> bytes | None:
        try:
            data = self.sampler.sample()
            record: Record = {
                "ts": utc_timestamp(),
                "collector": self.collector.name,
                "host": self.host,
                **data,
            }
            return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        except Exception as exc:
            _complain(self.collector.program, f"sample failed: {_describe(exc)}")
            return None

    def _touch_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            self.health_file.parent.mkdir(parents=True, exist_ok=True)
            self.health_file.touch()
        except OSError as exc:
            # Say so once per streak: the probe failing is the signal, not a log line per sample.
            if self.health_file_ok:
                _complain(self.collector.program, f"cannot update health file: {_describe(exc)}")
            self.health_file_ok = False
        else:
            self.health_file_ok = True

    def _remove_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            self.health_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            _complain(self.collector.program, f"cannot remove health file: {_describe(exc)}")


def check_health_file(path: Path, *, max_age_seconds: float, program: str) -> int:
    """The liveness probe: 0 if ``path`` was touched within ``max_age_seconds``, else 1."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        _complain(program, f"unhealthy: {path} does not exist (no sample written yet?)")
        return 1
    except OSError as exc:
        _complain(program, f"unhealthy: {_describe(exc)}")
        return 1
    age_seconds = time.time() - modified
    if age_seconds > max_age_seconds:
        _complain(
            program,
            f"unhealthy: {path} was last updated {age_seconds:.1f} s ago "
            f"(more than {max_age_seconds:g} s)",
        )
        return 1
    return 0


class _StopSignals:
    """SIGTERM and SIGINT ask the loop to stop; they never interrupt a sample.

    The handlers only record the signal and the loop looks at it between
    samples. ``signal.set_wakeup_fd`` makes the wait between samples return at
    once, even for a signal that arrives just before the wait starts.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._read_fd = -1
        self._write_fd = -1
        self._previous_wakeup_fd = -1
        self._previous_handlers: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> _StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; whether a stop signal has arrived."""
        if self.received is None and seconds > 0:
            select.select([self._read_fd], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 512)
        return self.received is not None


# --- Output -----------------------------------------------------------------------------


def utc_timestamp() -> str:
    """Now, as ISO-8601 UTC with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_all(fd: int, data: bytes) -> None:
    # One write for a whole line on a regular file; a pipe may take it in parts.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _complain(program: str, message: str) -> None:
    # One line, whatever the message: a supervisor's log is read line by line.
    with contextlib.suppress(OSError):
        sys.stderr.write(f"{program}: {' '.join(message.split())}\n")
        sys.stderr.flush()
