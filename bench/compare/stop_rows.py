"""The stop measurements of the comparison (``--rows stop`` and ``--rows leak``).

Used by ``bench/compare_bench.py``. Not rows of the cost issue, but what an operator notices
when stopping a fleet:

- stop-all: M programs that ignore SIGTERM, graceful timeout 1 s, SIGTERM to the supervisor,
  until it and its programs have exited; what of the tree is left;
- grandchild leak: 2 programs that start a child and a ``setsid`` child, stopped with the tool's
  own CLI; how many grandchildren survive, with the tools' defaults and group options.
"""

from __future__ import annotations

import signal
import time

import psutil

from compare.observe import Observer, is_alive
from compare.rows import Figures, Settings
from compare.session import BenchError, kill_all, supervising, wait_running, wait_tree
from compare.tools import Policy, Program, Tool

IGNORE_TERM_SCRIPT = 'trap "" TERM; sleep 3600 & wait'
LEAK_SCRIPT = "sleep 3600 & setsid sleep 3600 & wait"
# supervisord counts a program as RUNNING only after startsecs (1 s); stopping earlier would
# measure its STARTING path instead, so the stop tests wait this long after the last exec.
STARTSECS_SETTLE_SECONDS = 1.5
STOP_TIMEOUT_SECONDS = 60.0
LEAK_GRACE_SECONDS = 3.0
STOP_PROGRAMS = 50


def measure_stop_all(
    tool: Tool,
    *,
    observer: Observer,
    figures: Figures,
    settings: Settings,
    count: int = STOP_PROGRAMS,
    metric: str = "stop_all",
) -> None:
    """SIGTERM to the supervisor of ``count`` programs that ignore SIGTERM, until all is gone."""
    programs = [
        Program(f"t{i:04d}", ("/bin/sh", "-c", IGNORE_TERM_SCRIPT, f"t{i:04d}"))
        for i in range(count)
    ]
    policy = Policy(graceful_timeout_seconds=1, group_signals=True, env=settings.env)
    with supervising(tool, programs, policy, observer) as supervised:
        pid = supervised.pid
        wait_running(observer, {program.argv for program in programs}, 120.0)
        tree = wait_tree(pid, 2 * count, time.monotonic() + 60)
        time.sleep(STARTSECS_SETTLE_SECONDS)
        direct = {observer.pid_of(program.argv) for program in programs}
        supervisor_and_programs = [pid, *direct]
        observer.expect_exits([*tree, (pid, psutil.Process(pid).create_time())])
        asked_ns = time.monotonic_ns()
        supervised.popen.send_signal(signal.SIGTERM)
        # supervisord stops one [program:] group after the other: allow 2 s a program.
        timeout = STOP_TIMEOUT_SECONDS + 2 * count * policy.graceful_timeout_seconds
        if observer.wait_exited([pid], time.monotonic() + timeout) is None:
            raise BenchError(f"still running {timeout:.0f} s after SIGTERM")
        stopped_ns = observer.wait_exited(
            supervisor_and_programs, time.monotonic() + LEAK_GRACE_SECONDS
        )
        # What is still alive a little after the supervisor's exit has leaked.
        deadline = time.monotonic() + LEAK_GRACE_SECONDS
        while any(is_alive(*entry) for entry in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        figures.add(tool.name, f"{metric}_left", sum(is_alive(*entry) for entry in tree))
        if stopped_ns is None:
            raise BenchError("programs outlived their supervisor")
        figures.add(tool.name, metric, (stopped_ns - asked_ns) / 1e9)


def measure_leak(
    tool: Tool, *, observer: Observer, figures: Figures, settings: Settings, group_signals: bool
) -> None:
    """Stop 2 programs (each with a child and a setsid child) via the tool; count survivors."""
    programs = [Program(f"g{i}", ("/bin/sh", "-c", LEAK_SCRIPT, f"g{i}")) for i in range(2)]
    policy = Policy(graceful_timeout_seconds=1, group_signals=group_signals, env=settings.env)
    with supervising(tool, programs, policy, observer) as supervised:
        argvs = {program.argv for program in programs}
        wait_running(observer, argvs, 60.0)
        tree = wait_tree(supervised.pid, 6, time.monotonic() + 30)
        direct = [observer.pid_of(program.argv) for program in programs]
        grandchildren = [entry for entry in tree if entry[0] not in direct]
        try:
            observer.expect_exits(entry for entry in tree if entry[0] in direct)
            for program in programs:
                tool.stop_program(supervised.workdir, program.name)
            if observer.wait_exited(direct, time.monotonic() + 30) is None:
                raise BenchError("the programs did not stop")
            deadline = time.monotonic() + LEAK_GRACE_SECONDS
            while any(is_alive(*entry) for entry in grandchildren) and time.monotonic() < deadline:
                time.sleep(0.1)
            metric = "leak_group" if group_signals else "leak_default"
            figures.add(tool.name, metric, sum(is_alive(*entry) for entry in grandchildren))
        finally:
            kill_all(grandchildren)
