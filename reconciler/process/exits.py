"""Noticing child exits through the kernel: a pidfd per child, in the event loop's epoll.

No polling and no thread per child: when a child exits its pidfd becomes
readable, the loop calls us, we reap it and report its exit code (negative for
a killing signal, as subprocess reports it). As a child subreaper the process
also inherits orphaned descendants of its collectors (double forks, setsid
escapees); ``ExitWatcher`` then reaps those too on SIGCHLD, so none is left a
zombie. Used by the process manager and by exec health probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator

from reconciler.errors import PlatformNotSupported

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(enabled: bool) -> bool:
    """Make this process inherit its descendants' orphans; ``False`` where the kernel says no."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def quiet_wakeup_fd() -> None:
    """Keep the loop's signal wakeup fd, without a warning each time its buffer is full.

    Every SIGCHLD writes a byte there; a thousand children exiting while the
    loop is busy (a fleet stopped at once) fill it, and each further signal
    printed "Exception ignored when trying to write to the signal wakeup fd"
    on stderr. The warning is all that changes: a byte that does not fit is
    dropped with or without it, and for SIGCHLD one reap takes every exited
    child. ``add_signal_handler`` sets the fd with the warning on, so this
    follows it. Signals are blocked for the swap, so none arrives between the
    two calls and goes unannounced.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class ExitWatcher:
    """Calls back once per watched child, with its exit code, as soon as it exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reap_orphans: bool = False) -> None:
        if not hasattr(os, "pidfd_open"):
            raise PlatformNotSupported("exit watching needs pidfd_open (Linux 5.3 or later)")
        self._loop = loop
        self._watched: dict[
            int, tuple[subprocess.Popen[bytes] | None, int, Callable[[int | None], None]]
        ] = {}
        self._reap_orphans = False
        self._spawning = 0
        if reap_orphans:
            try:
                loop.add_signal_handler(signal.SIGCHLD, self._reap_all)
                self._reap_orphans = True
                quiet_wakeup_fd()
            except (RuntimeError, ValueError) as exc:
                # Signal handlers only work in the main thread; orphans are
                # then reaped whenever one of our own children exits.
                log.debug("no SIGCHLD handler (%s); reaping orphans on child exits", exc)

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Hold off orphan reaping while a child is forked but not yet watched.

        Otherwise a child that exits at once could be taken for an orphan and
        reaped, and its exit code lost.
        """
        self._spawning += 1
        try:
            yield
        finally:
            self._spawning -= 1
            self._reap_all()

    def watch(self, popen: subprocess.Popen[bytes], on_exit: Callable[[int | None], None]) -> None:
        """Call ``on_exit(returncode)`` once ``popen`` has exited (and been reaped)."""
        self._add(popen.pid, popen, on_exit)

    def watch_pid(self, pid: int, on_exit: Callable[[int | None], None]) -> None:
        """Call ``on_exit(None)`` once ``pid``, not a child of ours, has exited.

        For processes adopted after a reconciler restart: the kernel tells
        anyone holding a pidfd about the exit, but only the parent learns the
        exit status. Raises ``ProcessLookupError`` if it is already gone.
        """
        self._add(pid, None, on_exit)

    def _add(
        self,
        pid: int,
        popen: subprocess.Popen[bytes] | None,
        on_exit: Callable[[int | None], None],
    ) -> None:
        pidfd = os.pidfd_open(pid)
        self._watched[pid] = (popen, pidfd, on_exit)
        self._loop.add_reader(pidfd, self._on_readable, pid)

    def _on_readable(self, pid: int) -> None:
        entry = self._watched.pop(pid, None)
        if entry is None:
            return
        popen, pidfd, on_exit = entry
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        returncode = None
        if popen is not None:
            returncode = popen.poll()
            if returncode is None:  # pragma: no cover - a readable pidfd means it exited
                returncode = popen.wait()
        on_exit(returncode)
        self._reap_all()

    def _reap_all(self) -> None:
        """Reap every exited child: ours through its Popen, orphans directly."""
        if not self._reap_orphans or self._spawning:
            return
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            entry = self._watched.get(info.si_pid)
            if entry is not None and entry[0] is not None:
                # Reaped here, reported when its pidfd's readiness is handled.
                if entry[0].poll() is None:  # pragma: no cover - another thread waits on it
                    return
            else:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.si_pid, os.WNOHANG)
                log.debug("reaped orphaned descendant pid %d", info.si_pid)

    def close(self) -> None:
        for pid in list(self._watched):
            _, pidfd, _ = self._watched.pop(pid)
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        if self._reap_orphans:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._reap_orphans = False
