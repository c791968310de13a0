"""What a supervisor process costs, read from /proc: CPU, wake-ups, threads, memory.

Used by ``bench/compare_bench.py`` and ``bench/scaling.py``. Always the supervisor's own
process (all its threads), never its children: ``utime``/``stime`` of ``/proc/<pid>/stat``
exclude the children, whose time goes to ``cutime``/``cstime`` once reaped.

Two CPU clocks, because an idle supervisor is near the resolution of the first:

- ticks: ``utime + stime`` of ``/proc/<pid>/stat``, in ``SC_CLK_TCK`` (10 ms) steps; what
  ``top`` and psutil report. Over 30 s one tick is 0.033 % of a core.
- schedstat: the scheduler's nanoseconds on a CPU (``/proc/<pid>/task/*/schedstat``, summed
  over the threads alive at each reading). Exact, but a thread that exits between two readings
  takes its time with it, so it is only used over windows where the thread set is stable
  (idle), and checked against the ticks.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process's counters, with the monotonic time it was taken."""

    at_ns: int
    ticks: int
    """utime + stime, in clock ticks."""
    run_ns: int
    """schedstat: nanoseconds on a CPU, summed over the live threads."""
    switches: int
    """voluntary + involuntary context switches of the live threads: how often it woke up."""
    threads: int


def sample(pid: int) -> Sample:
    """Read the counters of ``pid`` now; ``OSError`` once it is gone."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    run_ns = switches = threads = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended while we read
            run_ns += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
            threads += 1
    return Sample(time.monotonic_ns(), ticks, run_ns, switches, threads)


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU between two samples, as % of one core, by both clocks; wake-ups per second."""

    seconds: float
    ticks_percent: float
    schedstat_percent: float
    cpu_seconds: float
    """By ticks: what the process was charged over the window."""
    wakeups_per_second: float


def usage(before: Sample, after: Sample) -> Usage:
    seconds = (after.at_ns - before.at_ns) / 1e9
    cpu_seconds = (after.ticks - before.ticks) / CLOCK_TICKS_PER_SECOND
    # max(): a thread that exited in the window takes its schedstat and switches with it.
    run_seconds = max(0, after.run_ns - before.run_ns) / 1e9
    return Usage(
        seconds=seconds,
        ticks_percent=cpu_seconds / seconds * 100,
        schedstat_percent=run_seconds / seconds * 100,
        cpu_seconds=cpu_seconds,
        wakeups_per_second=max(0, after.switches - before.switches) / seconds,
    )


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, USS) of ``pid`` in MiB: USS is what only it holds (psutil reads smaps)."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.uss / 2**20
