"""One supervisor under test: started in a temp dir, always stopped and cleaned up after.

Used by ``bench/compare_bench.py`` and ``bench/scaling.py``. The benchmark makes itself a child
subreaper, so every process that leaves a supervised tree re-parents to it and is killed and
reaped at the end of each session, even on failure or SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from compare.observe import Argv, Observer, is_alive
from compare.tools import Policy, Program, Tool

PR_SET_CHILD_SUBREAPER = 36
METRICS_LINE = re.compile(rb"metrics on http://([0-9.]+):([0-9]+)/metrics")
CTL_TIMEOUT_SECONDS = 60.0


class BenchError(Exception):
    """A measurement that could not complete (timeout, a tool's CLI failing)."""


@dataclass
class Supervised:
    tool: Tool
    workdir: Path
    popen: subprocess.Popen[bytes]
    started_ns: int
    shutdown_seconds: float | None = None
    """SIGTERM to exit, when the cleanup was what stopped the tool and it exited by itself."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "supervisor.log"


def become_subreaper() -> bool:
    """Orphans of every supervised tree re-parent to us, so none is lost to init unkilled."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def raise_open_files_limit() -> None:
    # 1000s of programs cost each tool at least one fd (pidfd, pipe) each; inherited by the tools.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, create_time) of the whole tree below ``pid`` (one full /proc scan: slow)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found.append((child.pid, child.create_time()))
    return found


def kill_all(processes: Sequence[tuple[int, float]]) -> None:
    for pid, create_time in processes:
        if is_alive(pid, create_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def reap_orphans(deadline_seconds: float = 10.0) -> None:
    """Kill and reap every child of ours: by now only escapees re-parented to us are left."""
    deadline = time.monotonic() + deadline_seconds
    for child in psutil.Process().children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(child.pid, os.WNOHANG) == (0, 0):
                    time.sleep(0.01)
                    continue
            break


def shut_down(popen: subprocess.Popen[bytes], timeout_seconds: float) -> float | None:
    """The tool's own shutdown (SIGTERM), then SIGKILL; then whatever of its tree is left.

    Returns the seconds from SIGTERM to the tool's exit, or None if it had exited already or
    had to be killed.
    """
    if popen.poll() is not None:
        return None
    tree = descendants(popen.pid)
    seconds = None
    asked = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout_seconds)
        seconds = time.monotonic() - asked
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(10)
    kill_all(tree)
    return seconds


@contextlib.contextmanager
def supervising(
    tool: Tool, programs: Sequence[Program], policy: Policy, observer: Observer
) -> Iterator[Supervised]:
    """Run ``tool`` on ``programs`` in a temp dir; always stopped and cleaned up after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"compare-{tool.name}-"))
    tool.write_config(workdir, programs, policy)
    popen = supervised = None
    finished = False
    try:
        with (workdir / "supervisor.log").open("wb") as log:
            started_ns = time.monotonic_ns()
            popen = subprocess.Popen(
                tool.command(workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,  # a Ctrl-C in our terminal is ours to pass on
            )
        # Each tool imports for >100 ms before its first fork: watching now misses nothing.
        observer.watch(popen.pid)
        supervised = Supervised(tool, workdir, popen, started_ns)
        yield supervised
        finished = True
    finally:
        if popen is not None:
            seconds = shut_down(popen, timeout_seconds=policy.graceful_timeout_seconds + 60)
            if supervised is not None:
                supervised.shutdown_seconds = seconds
        reap_orphans()
        tool.cleanup(workdir)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  kept {workdir} for its logs", file=sys.stderr)


def wait_tree(pid: int, size: int, deadline: float) -> list[tuple[int, float]]:
    """Poll (slowly: each scan reads all of /proc) until ``pid`` has ``size`` descendants."""
    while True:
        tree = descendants(pid)
        if len(tree) >= size:
            return tree
        if time.monotonic() >= deadline:
            raise BenchError(f"{len(tree)} of {size} processes in the tree")
        time.sleep(0.25)


def wait_running(observer: Observer, argvs: set[Argv], timeout: float) -> int:
    """Block until every argv has exec'd; the kernel's time (ns) of the last exec."""
    running_ns = observer.wait_running(argvs, time.monotonic() + timeout)
    if running_ns is None:
        count = observer.running_count(argvs)
        raise BenchError(f"{count} of {len(argvs)} running after {timeout:.0f} s")
    return running_ns


def metrics_address(supervised: Supervised, timeout: float = 30.0) -> tuple[str, int]:
    """Where the reconciler listens for /metrics (it logs the port it picked for port 0)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            found = METRICS_LINE.search(supervised.log_path.read_bytes())
            if found:
                return found.group(1).decode(), int(found.group(2))
        if time.monotonic() >= deadline or supervised.popen.poll() is not None:
            raise BenchError("the reconciler did not log its metrics address")
        time.sleep(0.05)


def timed_command(argv: list[str]) -> float:
    """Run a control command to its exit, as an operator's shell would; its wall time in s."""
    started = time.perf_counter()
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=CTL_TIMEOUT_SECONDS,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{argv[0]} exited {result.returncode}: {result.stderr[-300:]!r}")
    return seconds
