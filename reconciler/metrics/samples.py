"""What is kept between scrapes: per-pid CPU samples from ``/proc``, monotonic
counters and the pass-duration histogram.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.core import HistogramMetricFamily

from reconciler.metrics.constants import CLOCK_TICKS_PER_SECOND, PAGE_BYTES, go_float

# -- /proc ------------------------------------------------------------------------


class _PidSample(NamedTuple):
    """What one ``/proc/<pid>/stat`` read says about a process."""

    start_ticks: int
    """Start time after boot: tells a reused pid from the process seen before."""
    ppid: int
    cpu_ticks: int
    """utime + stime + cutime + cstime: its own CPU and that of the children it reaped."""
    rss_bytes: int


def read_stat(pid: int) -> _PidSample | None:
    """One read of ``/proc/<pid>/stat``; ``None`` if the process is gone.

    Its ``rss`` field is the number ``statm`` reports as resident, so one file
    per process gives both CPU and memory: this runs for every process of
    every collector on each scrape.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return _PidSample(
            start_ticks=int(fields[19]),
            ppid=int(fields[1]),
            cpu_ticks=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
            rss_bytes=int(fields[21]) * PAGE_BYTES,
        )
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class TreeCpu:
    """CPU of one collector's process tree, made monotonic for the life of its id.

    A scrape sees only live processes, and a process's CPU vanishes from
    ``/proc`` with it. Each live process counts its own CPU plus that of the
    children it reaped (cutime/cstime). When a process seen before is gone:

    - if its parent is still in the tree, the parent reaped it (or will), and
      its CPU is (or will be) in the parent's cutime: nothing is kept, so
      nothing is counted twice;
    - otherwise it was reaped outside the tree (the collector's main process
      by the reconciler, an orphan by init or a subreaper): its last seen CPU
      is kept in ``retained_ticks``.

    What a process used after the last scrape before it died, and a child
    reaped by a parent that ignores SIGCHLD, are not seen. The reported value
    never decreases (``reported_ticks``), so a parent that has not reaped yet
    only holds the counter flat for a moment.
    """

    seen: dict[int, _PidSample] = field(default_factory=dict)
    retained_ticks: int = 0
    reported_ticks: int = 0

    def update(self, samples: Mapping[int, _PidSample]) -> float:
        """Take this scrape's samples of the tree's live processes; return CPU seconds."""
        for pid, before in self.seen.items():
            now = samples.get(pid)
            if now is not None and now.start_ticks == before.start_ticks:
                continue
            parent = samples.get(before.ppid)
            parent_before = self.seen.get(before.ppid)
            reaped_inside = (
                parent is not None
                and parent_before is not None
                and parent.start_ticks == parent_before.start_ticks
            )
            if not reaped_inside:
                self.retained_ticks += before.cpu_ticks
        self.seen = dict(samples)
        total = self.retained_ticks + sum(sample.cpu_ticks for sample in samples.values())
        self.reported_ticks = max(self.reported_ticks, total)
        return self.reported_ticks / CLOCK_TICKS_PER_SECOND


@dataclass(slots=True)
class Monotonic:
    """A count that may restart from 0 underneath (a forgotten and re-created
    manager record) reported as one counter for the life of the id."""

    offset: int = 0
    last: int = 0

    def update(self, value: int) -> int:
        if value < self.last:
            self.offset += self.last
        self.last = value
        return self.offset + value


class DurationHistogram:
    """Loop pass durations; a family of its own so the exposition has no ``_created``
    series beyond the names DESIGN §9 fixes (``prometheus_client.Histogram`` adds one)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum_seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum_seconds += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((go_float(bound), float(cumulative)))
        return HistogramMetricFamily(
            name, documentation, buckets=buckets, sum_value=self.sum_seconds
        )
