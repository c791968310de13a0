"""How the comparison sees a supervisor's children start, get replaced and exit.

Used by ``bench/compare_bench.py``. Two observers with one interface:

- ``ProcEvents``: the kernel's process events (netlink proc connector), with the kernel's own
  CLOCK_MONOTONIC timestamp of every fork, exec and exit. Nothing polls, so the measurement costs
  the supervisor under test nothing and is exact to the microsecond. Needs root (CAP_NET_ADMIN)
  and CONFIG_PROC_EVENTS.
- ``PollingObserver``: ``psutil`` scans, where the proc connector is unavailable. On a 2-core
  machine one ``psutil.Process.children()`` call with ~1000 processes alive costs 50-100 ms
  (it reads every ``/proc/<pid>/stat``), so it can only poll slowly and it competes with the
  supervisor it measures: a fallback, and the report says which observer was used.

A program is known by its argv, which the comparison makes unique per program.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable

import psutil

Argv = tuple[str, ...]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
SO_RCVBUFFORCE = 33  # not exported by the socket module
RECEIVE_BUFFER_BYTES = 64 << 20  # 500 forks + execs in a burst, plus the rest of the machine

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FORK = struct.Struct("=IIII")  # parent_pid, parent_tgid, child_pid, child_tgid
_PIDS = struct.Struct("=II")  # process_pid, process_tgid (exec and exit start alike)
_EVENT_OFFSET = _NLMSGHDR.size + _CN_MSG.size
_DATA_OFFSET = _EVENT_OFFSET + _EVENT_HEADER.size


def read_argv(pid: int) -> Argv | None:
    """The argv of ``pid`` as /proc shows it now; ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1])


def is_alive(pid: int, create_time: float | None = None) -> bool:
    """Alive and not a zombie (a zombie has exited), and the same process if a time is given."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 0.01:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcEvents:
    """Children of one watched process, and exits of chosen pids, from kernel events."""

    name = "kernel process events (netlink proc connector)"

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._watched: int | None = None
        self._children: dict[int, Argv | None] = {}  # forked children; argv once exec'd
        self._by_argv: dict[Argv, tuple[int, int]] = {}  # argv -> (pid, exec ns)
        self._expected: set[int] = set()
        self._exits: dict[int, int] = {}  # expected pid -> exit ns
        self._execs: Counter[Argv] = Counter()  # execs seen per argv since watch()
        self.overflows = 0
        self._closing = False
        self._thread = threading.Thread(target=self._receive, name="proc-events", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls) -> ProcEvents | None:
        """Subscribe to process events; ``None`` where the kernel or our privileges refuse."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            sock.bind((0, CN_IDX_PROC))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
            sock.send(_control(PROC_CN_MCAST_LISTEN))
            sock.settimeout(0.25)  # so that close() is noticed
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self._sock.send(_control(PROC_CN_MCAST_IGNORE))
        self._sock.close()

    def watch(self, pid: int) -> None:
        """Track the children of ``pid`` from now on (forget the previous one)."""
        with self._cond:
            self._watched = pid
            self._children.clear()
            self._by_argv.clear()
            self._expected.clear()
            self._exits.clear()
            self._execs.clear()

    def exec_count(self, argvs: set[Argv]) -> int | None:
        """How many times a child exec'd one of ``argvs`` since ``watch`` (starts, restarts)."""
        with self._cond:
            return sum(self._execs[argv] for argv in argvs)

    def wait_running(self, argvs: set[Argv], deadline: float) -> int | None:
        """Block until a child runs each argv; the exec time (ns) of the last one, or None."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: argvs <= self._by_argv.keys(), timeout=_remaining(deadline)
            )
            if not done:
                return None
            return max(self._by_argv[argv][1] for argv in argvs)

    def running_count(self, argvs: set[Argv]) -> int:
        with self._cond:
            return len(argvs & self._by_argv.keys())

    def pid_of(self, argv: Argv) -> int | None:
        with self._cond:
            entry = self._by_argv.get(argv)
            return None if entry is None else entry[0]

    def wait_replaced(self, argv: Argv, old_pid: int, deadline: float) -> int | None:
        """Block until a new child runs ``argv``; its exec time (ns), or None at the deadline."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._by_argv.get(argv, (old_pid, 0))[0] != old_pid,
                timeout=_remaining(deadline),
            )
            return self._by_argv[argv][1] if done else None

    def expect_exits(self, pids: Iterable[tuple[int, float]]) -> None:
        """Record the exit time of these (pid, create_time) processes from now on."""
        with self._cond:
            for pid, create_time in pids:
                self._expected.add(pid)
                # Gone already (the event passed before we cared): exited "now".
                if not is_alive(pid, create_time):
                    self._exits.setdefault(pid, time.monotonic_ns())

    def wait_exited(self, pids: Iterable[int], deadline: float) -> int | None:
        """Block until every pid (given to ``expect_exits``) exited; the last exit time (ns)."""
        wanted = set(pids)
        with self._cond:
            done = self._cond.wait_for(
                lambda: wanted <= self._exits.keys(), timeout=_remaining(deadline)
            )
            return max(self._exits[pid] for pid in wanted) if done and wanted else None

    def _receive(self) -> None:
        while not self._closing:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # Events were dropped: rebuild the picture from /proc and count it.
                    self._resync()
                    continue
                return
            with self._cond:
                self._handle(data)
                self._cond.notify_all()

    def _handle(self, data: bytes) -> None:
        offset = 0
        while offset + _DATA_OFFSET <= len(data):
            length = _NLMSGHDR.unpack_from(data, offset)[0]
            what, _cpu, timestamp_ns = _EVENT_HEADER.unpack_from(data, offset + _EVENT_OFFSET)
            at = offset + _DATA_OFFSET
            if what == PROC_EVENT_FORK:
                _, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data, at)
                # child_pid != child_tgid is a new thread, not a new process.
                if parent_tgid == self._watched and child_pid == child_tgid:
                    self._children[child_pid] = None
            elif what == PROC_EVENT_EXEC:
                pid, tgid = _PIDS.unpack_from(data, at)
                if pid == tgid and pid in self._children:
                    argv = read_argv(pid)
                    if argv is not None:
                        self._children[pid] = argv
                        self._by_argv[argv] = (pid, timestamp_ns)
                        self._execs[argv] += 1
            elif what == PROC_EVENT_EXIT:
                pid, tgid = _PIDS.unpack_from(data, at)
                if pid == tgid:
                    self._exited(pid, timestamp_ns)
            offset += max((length + 3) & ~3, _DATA_OFFSET)

    def _exited(self, pid: int, timestamp_ns: int) -> None:
        argv = self._children.pop(pid, None)
        if argv is not None and self._by_argv.get(argv, (0, 0))[0] == pid:
            del self._by_argv[argv]
        if pid in self._expected:
            self._exits.setdefault(pid, timestamp_ns)

    def _resync(self) -> None:
        now = time.monotonic_ns()
        with self._cond:
            self.overflows += 1
            watched = self._watched
            if watched is not None:
                self._children.clear()
                self._by_argv.clear()
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(watched).children():
                        argv = read_argv(child.pid)
                        self._children[child.pid] = argv
                        if argv:
                            self._by_argv[argv] = (child.pid, now)
            for pid in self._expected - self._exits.keys():
                if not is_alive(pid):
                    self._exits[pid] = now
            self._cond.notify_all()


class PollingObserver:
    """The same answers from ``psutil`` scans every ``interval_seconds`` (coarse, and costly)."""

    name = "psutil polling"

    def __init__(self, interval_seconds: float = 0.1) -> None:
        self.interval_seconds = interval_seconds
        self.overflows = 0
        self._watched: int | None = None
        self._expected: dict[int, float] = {}

    def close(self) -> None:
        pass

    def watch(self, pid: int) -> None:
        self._watched = pid
        self._expected.clear()

    def _scan(self) -> dict[Argv, int]:
        found: dict[Argv, int] = {}
        if self._watched is None:
            return found
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._watched).children():
                argv = read_argv(child.pid)
                if argv:
                    found[argv] = child.pid
        return found

    def _poll(self, ready, deadline: float) -> int | None:
        while True:
            if ready():
                return time.monotonic_ns()
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.interval_seconds)

    def wait_running(self, argvs: set[Argv], deadline: float) -> int | None:
        return self._poll(lambda: argvs <= self._scan().keys(), deadline)

    def running_count(self, argvs: set[Argv]) -> int:
        return len(argvs & self._scan().keys())

    def pid_of(self, argv: Argv) -> int | None:
        return self._scan().get(argv)

    def wait_replaced(self, argv: Argv, old_pid: int, deadline: float) -> int | None:
        return self._poll(lambda: self._scan().get(argv, old_pid) != old_pid, deadline)

    def exec_count(self, argvs: set[Argv]) -> int | None:
        return None  # restarts between two scans are invisible to polling

    def expect_exits(self, pids: Iterable[tuple[int, float]]) -> None:
        self._expected.update(pids)

    def wait_exited(self, pids: Iterable[int], deadline: float) -> int | None:
        wanted = [(pid, self._expected[pid]) for pid in pids]
        return self._poll(lambda: not any(is_alive(*entry) for entry in wanted), deadline)


Observer = ProcEvents | PollingObserver


def open_observer(*, polling: bool) -> Observer:
    """Kernel events where possible (or unless ``polling``), else psutil polling."""
    events = None if polling else ProcEvents.open()
    return events if events is not None else PollingObserver()


def _control(operation: int) -> bytes:
    payload = struct.pack("=I", operation)
    message = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(message), NLMSG_DONE, 0, 0, os.getpid())
    return header + message


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
