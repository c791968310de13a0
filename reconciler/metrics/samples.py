"""What is kept between scrapes: the ``/proc`` and cgroup files of every collector's
process tree (``TreeReader``), per-pid CPU samples, monotonic counters and the
pass-duration histogram.
"""

from __future__ import annotations

import bisect
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from reconciler.metrics.constants import CLOCK_TICKS_PER_SECOND, PAGE_BYTES
from reconciler.metrics.families import Family, HistogramFamily
from reconciler.process import CollectorProcessManager
from reconciler.process.driver import Run

# -- /proc ------------------------------------------------------------------------

_STAT_BYTES = 1024
"""Enough for any ``/proc/<pid>/stat`` line (the command name is at most 16 bytes)."""
_PROCS_BYTES = 4096
_KEPT_SHARE_OF_FD_LIMIT = 4
"""Files kept open take at most this share (1/N) of the soft RLIMIT_NOFILE."""


class _PidSample(NamedTuple):
    """What one ``/proc/<pid>/stat`` read says about a process."""

    start_ticks: int
    """Start time after boot: tells a reused pid from the process seen before."""
    ppid: int
    cpu_ticks: int
    """utime + stime + cutime + cstime: its own CPU and that of the children it reaped."""
    rss_bytes: int


def parse_stat(data: bytes) -> _PidSample | None:
    """The fields of a ``/proc/<pid>/stat`` line the exporter uses.

    Its ``rss`` field is the number ``statm`` reports as resident, so one file
    per process gives both CPU and memory.
    """
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


def read_stat(pid: int) -> _PidSample | None:
    """One read of ``/proc/<pid>/stat``; ``None`` if the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _STAT_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_stat(data)


def _fd_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft // _KEPT_SHARE_OF_FD_LIMIT


class KeptFiles:
    """Files read again on every scrape, kept open between scrapes.

    ``/proc/<pid>/stat`` and ``cgroup.procs`` are generated on each read, so a
    ``pread`` at offset 0 of a file kept open reads them anew: one system call
    instead of open, read and close, and no path lookup (the costly part in
    ``/proc`` and cgroupfs). A kept ``/proc/<pid>/stat`` stays that process's:
    once it is gone the read fails (ESRCH), also when its pid is reused; a kept
    ``cgroup.procs`` of a removed cgroup fails with ENODEV and does not keep
    the cgroup from being removed. A failed read closes the file and opens the
    path once more (a reused pid is another process, whose file it then is).

    At most a quarter of the soft RLIMIT_NOFILE is kept open (an embedder's
    limit may be low); beyond that, files are opened and closed per read.
    ``sweep()`` closes what was not read since the last sweep.
    """

    def __init__(self, *, max_open: int | None = None) -> None:
        self.max_open = _fd_budget() if max_open is None else max_open
        self.kept: dict[object, int] = {}
        """Key -> the file kept open for it."""
        self.used: set[object] = set()
        """Keys read since the last sweep."""
        self.closes = 0
        """Kept files closed so far: a descriptor held elsewhere is still this one's while
        the count is the same (once closed, its number may be another file's)."""

    def __len__(self) -> int:
        return len(self.kept)

    def read(self, key: object, path: str, size: int) -> bytes | None:
        """Up to ``size`` bytes of ``path`` from its start (``key`` names it); ``None`` if gone."""
        fd = self.kept.get(key)
        if fd is not None:
            try:
                data = os.pread(fd, size, 0)
            except OSError:
                del self.kept[key]
                os.close(fd)
                self.closes += 1
            else:
                self.used.add(key)
                return data
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, 0)
        except OSError:
            os.close(fd)
            return None
        if len(self.kept) < self.max_open:
            self.kept[key] = fd
            self.used.add(key)
        else:
            os.close(fd)
        return data

    def read_all(self, key: object, path: str, size: int) -> bytes | None:
        """The whole of ``path``: ``read`` and then, while it fills ``size``, what follows."""
        data = self.read(key, path, size)
        if data is None or len(data) < size:
            return data
        chunks = [data]
        fd = self.kept.get(key)
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return _read_from(fd, 0)
                finally:
                    os.close(fd)
            chunks.append(_read_from(fd, size))
        except OSError:
            return None
        return b"".join(chunks)

    def sweep(self) -> None:
        """Close every kept file not read since the last sweep."""
        opened, read = self.kept, self.used
        if len(read) != len(opened):
            for key in [key for key in opened if key not in read]:
                os.close(opened.pop(key))
                self.closes += 1
        read.clear()

    def close(self) -> None:
        for fd in self.kept.values():
            os.close(fd)
        self.closes += len(self.kept)
        self.kept.clear()
        self.used.clear()


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class _Unchanged(NamedTuple):
    """A cgroup-tracked tree as the last scrape read it, with the descriptors of its kept files.

    The next scrape reads the same descriptors first: when ``cgroup.procs``
    and every ``stat`` line read the same, the tree's samples are the last
    ones, with no lookup, parse or new object (a sleeping collector's are).
    """

    run: Run
    cgroup: Path
    procs_fd: int
    procs: bytes
    stat_fds: tuple[int, ...]
    lines: list[bytes]
    keys: tuple[object, ...]
    """The ``KeptFiles`` keys of those descriptors (marked read at each scrape)."""
    samples: dict[int, _PidSample]
    closes: int
    """``KeptFiles.closes`` when made: the descriptors are valid while it is the same."""


class TreeReader:
    """The live processes of every collector's tree, read from ``/proc`` with kept files.

    A run with a cgroup of its own is its cgroup's ``cgroup.procs`` (what
    ``PosixDriver.tree_pids`` reads too, escapees included); a run without one
    (no cgroup tracking, or an adopted run whose cgroup is gone) is what the
    manager's driver says (``all_tree_pids``, one process-table scan for all).

    A tree whose pids and ``stat`` lines read the same as at the last scrape
    (a sleeping collector's do) gets the same samples object back: a scrape
    of an idle fleet makes no new object per collector, and so gives the
    garbage collector nothing to trace or promote. A cgroup-tracked tree is
    first read again from the descriptors of its last read (``_Unchanged``):
    its ``cgroup.procs``, then each ``stat`` line, with no lookup; only a
    changed pid list takes the long way.
    """

    def __init__(self, *, files: KeptFiles | None = None) -> None:
        self.files = KeptFiles() if files is None else files
        self._unchanged: dict[str, _Unchanged] = {}
        """Collector id -> its cgroup-tracked tree as last read (the fast path of ``read``)."""
        self._parsed: dict[int, tuple[bytes, _PidSample]] = {}
        """Pid -> its last ``stat`` line and what it says."""
        self._trees: dict[str, tuple[bytes | None, list[int], dict[int, _PidSample]]] = {}
        """Collector id -> its last ``cgroup.procs`` read, its pids and their samples."""

    def read(self, manager: CollectorProcessManager) -> dict[str, dict[int, _PidSample]]:
        """Collector id -> {pid: its sample} for every collector with a process.

        The samples are the reader's: the caller must not change them.
        """
        files, trees, unchanged = self.files, self._trees, self._unchanged
        runs = manager.executor.runs()
        untracked = any(run.cgroup_path is None for run in runs.values())
        by_driver = manager.all_tree_pids() if untracked else {}
        result: dict[str, dict[int, _PidSample]] = {}
        count = 0
        used = files.used
        for collector_id, run in runs.items():
            cgroup = run.cgroup_path
            fast = unchanged.get(collector_id)
            if fast is not None and fast.run is run and fast.cgroup is cgroup:
                again = self._read_again(collector_id, fast)
                if again is not None:
                    # At 1000 sleeping collectors, ~3 ms less than the lookups below.
                    used.update(fast.keys)
                    result[collector_id] = again
                    count += len(again)
                    continue
            last = trees.get(collector_id)
            procs: bytes | None = None
            if cgroup is None:
                pids = by_driver.get(collector_id, [run.pid])
            else:
                # Keyed by the path's text: a Path's hash is Python code, 1000 times a scrape.
                procs_path = f"{cgroup}/cgroup.procs"
                procs = files.read_all(procs_path, procs_path, _PROCS_BYTES)
                if last is not None and last[0] == procs:
                    pids = last[1]
                else:
                    pids = [int(pid) for pid in procs.split()] if procs else []
            samples = self._samples(pids, last[2] if last is not None else None)
            if last is None or samples is not last[2] or pids is not last[1]:
                trees[collector_id] = (procs, pids, samples)
            result[collector_id] = samples
            count += len(samples)
            self._remember(collector_id, run, procs, pids, samples)
        self._forget(result, count)
        files.sweep()
        return result

    def _forget(self, result: dict[str, dict[int, _PidSample]], count: int) -> None:
        """Drop what is kept of collectors and pids not in ``result`` (``count`` samples)."""
        for kept in (self._trees, self._unchanged):
            if len(kept) > len(result):
                for gone in [cid for cid in kept if cid not in result]:
                    del kept[gone]
        parsed = self._parsed
        if len(parsed) > count:
            live = {pid for samples in result.values() for pid in samples}
            for pid in [pid for pid in parsed if pid not in live]:
                del parsed[pid]

    def _read_again(self, collector_id: str, tree: _Unchanged) -> dict[int, _PidSample] | None:
        """The samples of ``tree`` read from its kept descriptors, if its pids are the same.

        The last samples themselves when every ``stat`` line reads the same;
        ``None`` (read it the long way) when ``cgroup.procs`` differs, a read
        fails, or a descriptor may have been closed since.
        """
        if tree.closes != self.files.closes:
            return None
        pread, parsed = os.pread, self._parsed
        try:
            if pread(tree.procs_fd, _PROCS_BYTES, 0) != tree.procs:
                return None
            lines = [pread(fd, _STAT_BYTES, 0) for fd in tree.stat_fds]
        except OSError:
            return None
        if lines == tree.lines:
            return tree.samples
        # A process worked: its line says new figures, the pids are the same.
        samples = {}
        for pid, data in zip(tree.samples, lines, strict=True):
            seen = parsed.get(pid)
            if seen is not None and seen[0] == data:
                samples[pid] = seen[1]
                continue
            sample = parse_stat(data)
            if sample is None:
                return None
            parsed[pid] = (data, sample)
            samples[pid] = sample
        self._unchanged[collector_id] = tree._replace(lines=lines, samples=samples)
        last = self._trees[collector_id]
        self._trees[collector_id] = (last[0], last[1], samples)
        return samples

    def _remember(
        self,
        collector_id: str,
        run: Run,
        procs: bytes | None,
        pids: list[int],
        samples: dict[int, _PidSample],
    ) -> None:
        """Keep what the fast path of ``read`` compares with, if every file is kept open."""
        self._unchanged.pop(collector_id, None)
        cgroup, kept, parsed = run.cgroup_path, self.files.kept, self._parsed
        if cgroup is None or procs is None or len(procs) >= _PROCS_BYTES:
            return
        procs_path = f"{cgroup}/cgroup.procs"
        if len(samples) != len(pids) or procs_path not in kept:
            return
        stat_fds, lines = [], []
        for pid in pids:
            fd, seen = kept.get(pid), parsed.get(pid)
            if fd is None or seen is None:
                return
            stat_fds.append(fd)
            lines.append(seen[0])
        self._unchanged[collector_id] = _Unchanged(
            run, cgroup, kept[procs_path], procs, tuple(stat_fds), lines,
            (procs_path, *pids), samples, self.files.closes,
        )  # fmt: skip

    def _samples(
        self, pids: list[int], last: dict[int, _PidSample] | None
    ) -> dict[int, _PidSample]:
        """The samples of ``pids``: ``last`` itself if they are all the same as in it."""
        files, parsed, kept, pread = self.files, self._parsed, self.files.kept, os.pread
        samples = {}
        same = last is not None and len(last) == len(pids)
        for pid in pids:
            # The usual case inline: a file kept open since the last scrape.
            fd = kept.get(pid)
            data = None
            if fd is not None:
                try:
                    data = pread(fd, _STAT_BYTES, 0)
                except OSError:
                    pass
                else:
                    files.used.add(pid)
            if data is None:
                data = files.read(pid, f"/proc/{pid}/stat", _STAT_BYTES)
                if data is None:
                    same = False
                    continue
            # A sleeping process's line is the same from scrape to scrape.
            seen = parsed.get(pid)
            if seen is not None and seen[0] == data:
                sample = seen[1]
            else:
                parsed_sample = parse_stat(data)
                if parsed_sample is None:
                    same = False
                    continue
                sample = parsed_sample
                parsed[pid] = (data, sample)
            samples[pid] = sample
            if same and last is not None and last.get(pid) is not sample:
                same = False
        return last if same and last is not None else samples

    def close(self) -> None:
        self.files.close()
        self._unchanged.clear()
        self._parsed.clear()
        self._trees.clear()


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
        if samples == self.seen:
            # The same processes with the same figures (a sleeping tree): nothing to add.
            return self.reported_ticks / CLOCK_TICKS_PER_SECOND
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

    def family(self, family: Family) -> HistogramFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        return HistogramFamily(family, buckets=buckets, sum_value=self.sum_seconds)
