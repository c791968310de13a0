"""Prometheus exporter and the metrics listener: ``/metrics``, ``/healthz``, ``/readyz``.

``ReconcilerCollector`` turns one consistent snapshot of a ``Reconciler`` —
``views()`` and the spec snapshot, read together in the event-loop thread at
scrape time — into the metric families of DESIGN §9, exactly those names,
labels and types. Nothing is polled between scrapes: the series are built
fresh on every scrape (so a removed collector's series disappear and a failed
one keeps its own), and the only state kept between scrapes is what makes the
counters monotonic and what the loop reports through its listeners (pass
durations, actions).

``MetricsServer`` serves the registry on the read-only TCP listener of
DESIGN §8 (aiohttp). ``reconciler.daemon`` starts it next to the loop;
embedders and tests may too. A scrape runs in the event-loop thread; at 1000
collectors it has ~23 000 samples, too many for ``generate_latest`` within
the 100 ms a scrape may take, so the families this module makes
(``SeriesFamily``, ``OneHotFamily``) write their own text — the same bytes,
tested — and anything else in the registry goes through ``generate_latest``.

Choices the contract leaves open:

- ``reconciler_collector_uptime_seconds`` is 0 without a process (as DESIGN
  says); ``reconciler_collector_start_time_seconds`` and
  ``reconciler_collector_last_exit_code`` are omitted while they have no value
  (Prometheus convention: a made-up 0 would turn ``time() - start_time`` into
  fifty years).
- ``reconciler_collector_cpu_seconds_total`` is monotonic for the life of a
  collector id, across restarts and children that come and go (``_TreeCpu``).
- ``reconciler_spec_valid{file="."}`` is the specs directory itself: always
  present, 0 while it is missing, unreadable or unsafe.
- ``reconciler_actions_total`` counts the six actions DESIGN names: the loop's
  start/stop/restart/pause/resume, the manager's automatic and operator
  restarts, and ``kill`` for a stop that had to end in SIGKILL. The loop's
  ``update`` (applied in place) and ``forget`` (bookkeeping) are no process
  actions and are not counted; the event record shows them.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import importlib.metadata
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from reconciler.errors import InvalidSpec, Io
from reconciler.loop import CollectorView, Reconciler
from reconciler.process import ManagerEvent
from reconciler.source import DIRECTORY_KEY, SpecSnapshot
from reconciler.state import CollectorState, DesiredState, HealthStatus

log = logging.getLogger(__name__)

ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")
"""``action`` label values of ``reconciler_actions_total`` (DESIGN §9)."""
RESULTS = ("success", "error")
DURATION_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""A pass plans and starts tasks without awaiting them: sub-millisecond to tens of ms."""
SLOW_SCRAPE_SECONDS = 1.0

_go_float: Callable[[float], str] = floatToGoString
"""How the text format writes a value (``floatToGoString`` has no annotations)."""
_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# -- /proc ------------------------------------------------------------------------


class _PidSample(NamedTuple):
    """What one ``/proc/<pid>/stat`` read says about a process."""

    start_ticks: int
    """Start time after boot: tells a reused pid from the process seen before."""
    ppid: int
    cpu_ticks: int
    """utime + stime + cutime + cstime: its own CPU and that of the children it reaped."""
    rss_bytes: int


def _read_stat(pid: int) -> _PidSample | None:
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
            rss_bytes=int(fields[21]) * _PAGE_BYTES,
        )
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class _TreeCpu:
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
        return self.reported_ticks / _CLOCK_TICKS_PER_SECOND


@dataclass(slots=True)
class _Monotonic:
    """A count that may restart from 0 underneath (a forgotten and re-created
    manager record) reported as one counter for the life of the id."""

    offset: int = 0
    last: int = 0

    def update(self, value: int) -> int:
        if value < self.last:
            self.offset += self.last
        self.last = value
        return self.offset + value


class _DurationHistogram:
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
            buckets.append((_go_float(bound), float(cumulative)))
        return HistogramMetricFamily(
            name, documentation, buckets=buckets, sum_value=self.sum_seconds
        )


# -- families -----------------------------------------------------------------------


class _Family:
    """One gauge or counter family of DESIGN §9: name, type, help, label names, and
    the line template the text exposition writes for each of its samples."""

    __slots__ = (
        "documentation",
        "header",
        "kind",
        "labels",
        "metric_name",
        "sample_name",
        "template",
    )

    def __init__(
        self, name: str, *, kind: str, documentation: str, labels: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.sample_name = name
        # prometheus_client names a counter family without ``_total``; its samples have it.
        self.metric_name = name.removesuffix("_total") if kind == "counter" else name
        self.documentation = documentation
        self.labels = labels
        help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        # As generate_latest writes it: labels sorted by name, value last.
        order = sorted(range(len(labels)), key=labels.__getitem__)
        fields = ",".join(f'{labels[i]}="{{{i}}}"' for i in order)
        value_field = f"{{{len(labels)}}}"
        self.template = (
            f"{name}{{{{{fields}}}}} {value_field}\n" if labels else f"{name} {value_field}\n"
        )


_ID = ("id", "type")
STATE = _Family(
    "reconciler_collector_state",
    kind="gauge",
    documentation="1 for the collector's current state, 0 for the other six.",
    labels=(*_ID, "state"),
)
DESIRED_STATE = _Family(
    "reconciler_collector_desired_state",
    kind="gauge",
    documentation="1 for the collector's desired state.",
    labels=(*_ID, "state"),
)
UP = _Family(
    "reconciler_collector_up",
    kind="gauge",
    documentation="1 while the collector is running.",
    labels=_ID,
)
HEALTH = _Family(
    "reconciler_collector_health",
    kind="gauge",
    documentation="1 for the collector's current health.",
    labels=(*_ID, "health"),
)
UPTIME = _Family(
    "reconciler_collector_uptime_seconds",
    kind="gauge",
    documentation="Seconds since the current process started (0 when none).",
    labels=_ID,
)
START_TIME = _Family(
    "reconciler_collector_start_time_seconds",
    kind="gauge",
    documentation="Unix time the current process started (absent when none).",
    labels=_ID,
)
RESTARTS = _Family(
    "reconciler_collector_restarts_total",
    kind="counter",
    documentation="Restarts of the collector, automatic and asked for.",
    labels=_ID,
)
LAST_EXIT_CODE = _Family(
    "reconciler_collector_last_exit_code",
    kind="gauge",
    documentation="Last exit code (negative: killed by that signal; absent before the first).",
    labels=_ID,
)
BACKOFF = _Family(
    "reconciler_collector_backoff_seconds",
    kind="gauge",
    documentation="Delay before the next automatic restart (0 when none is pending).",
    labels=_ID,
)
CPU = _Family(
    "reconciler_collector_cpu_seconds_total",
    kind="counter",
    documentation="CPU time of the collector's process tree.",
    labels=_ID,
)
MEMORY = _Family(
    "reconciler_collector_resident_memory_bytes",
    kind="gauge",
    documentation="Resident memory of the collector's process tree.",
    labels=_ID,
)
APPLIED_SPEC = _Family(
    "reconciler_collector_applied_spec_info",
    kind="gauge",
    documentation="1, labelled with the hash of the spec now applied.",
    labels=(*_ID, "hash"),
)
SPEC_VALID = _Family(
    "reconciler_spec_valid",
    kind="gauge",
    documentation='0 while that spec file fails to parse or validate; file="." is the directory.',
    labels=("file",),
)
SPEC_INFO = _Family(
    "reconciler_spec_info",
    kind="gauge",
    documentation="1, labelled with the hash of the file's last valid content.",
    labels=("file", "hash"),
)
SPECS = _Family("reconciler_specs", kind="gauge", documentation="Spec files loaded.")
ACTIONS_TOTAL = _Family(
    "reconciler_actions_total",
    kind="counter",
    documentation="Actions on collectors, by action and result.",
    labels=("action", "result"),
)
BUILD_INFO = _Family(
    "reconciler_build_info",
    kind="gauge",
    documentation="Version of the reconciler.",
    labels=("version",),
)
RECONCILE_DURATION = "reconciler_reconcile_duration_seconds"

_SPECIAL = ("\\", "\n", '"')


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class SeriesFamily(Metric):
    """A family whose samples are kept as (label values, value) rows.

    At 1000 collectors a scrape has ~23 000 samples: building a ``Sample``
    (a named tuple with a dict of labels) for each, and then
    ``generate_latest`` re-validating every name and sorting every sample's
    labels, costs ~10 µs a sample on a small machine — the whole 100 ms
    budget twice over. ``text()`` writes the same bytes as ``generate_latest``
    (tested) from the rows and a per-family template; ``samples`` still
    gives prometheus_client's view, built when something asks for it.
    """

    def __init__(self, family: _Family) -> None:
        super().__init__(family.metric_name, family.documentation, family.kind)
        self.family = family
        self.rows: list[tuple[tuple[str, ...], float]] = []

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.rows.append((labels, value))

    @property
    def samples(self) -> list[Sample]:
        name, labels = self.family.sample_name, self.family.labels
        return [
            Sample(name, dict(zip(labels, row, strict=True)), value) for row, value in self.rows
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ assigns an empty list; the rows are the samples.
        if value:
            raise AttributeError("a SeriesFamily's samples are its rows")

    def text(self) -> str:
        """This family in the text exposition format."""
        line, rows = self.family.template.format, self.rows
        # Ids, types, hashes and state names never need escaping: check once, in C.
        every_label = "\0".join(map("\0".join, map(itemgetter(0), rows)))
        if any(char in every_label for char in _SPECIAL):
            rows = [(tuple(map(_escape_label_value, labels)), value) for labels, value in rows]
        # Most values are the 0 and 1 of a state set.
        lines = [
            line(*labels, "1.0" if value == 1 else "0.0" if value == 0 else _go_float(value))
            for labels, value in rows
        ]
        return self.family.header + "".join(lines)


class OneHotFamily(SeriesFamily):
    """A state set: per collector, 1 for its current choice and 0 for each other.

    Kept as one (labels, current choice) row per collector and written as one
    block of lines each: two thirds of a scrape's samples are these.
    """

    def __init__(self, family: _Family, choices: tuple[str, ...]) -> None:
        super().__init__(family)
        self.choices = choices
        self.hot: list[tuple[tuple[str, ...], str]] = []
        # The choice label is the last one; the others become the block's fields.
        marks = [f"\0{i}\0" for i in range(len(family.labels) - 1)]
        self._blocks: dict[str, Callable[..., str]] = {}
        for current in choices:
            block = "".join(
                family.template.format(*marks, choice, "1.0" if choice == current else "0.0")
                for choice in choices
            )
            block = block.replace("{", "{{").replace("}", "}}")
            for index, mark in enumerate(marks):
                block = block.replace(mark, f"{{{index}}}")
            self._blocks[current] = block.format

    def add_hot(self, labels: tuple[str, ...], current: str) -> None:
        self.hot.append((labels, current))

    @property
    def samples(self) -> list[Sample]:
        name, names = self.family.sample_name, self.family.labels
        return [
            Sample(name, dict(zip(names, (*labels, choice), strict=True)), int(choice == current))
            for labels, current in self.hot
            for choice in self.choices
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise AttributeError("a OneHotFamily's samples are its rows")

    def text(self) -> str:
        hot, blocks = self.hot, self._blocks
        every_label = "\0".join(map("\0".join, map(itemgetter(0), hot)))
        if any(char in every_label for char in _SPECIAL):
            hot = [(tuple(map(_escape_label_value, labels)), now) for labels, now in hot]
        return self.family.header + "".join([blocks[now](*labels) for labels, now in hot])


def encode(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``: what ``generate_latest`` writes, faster.

    ``SeriesFamily`` families write themselves; anything else a registry may
    hold goes through ``generate_latest``.
    """
    parts: list[str] = []
    for metric in registry.collect():
        if isinstance(metric, SeriesFamily):
            parts.append(metric.text())
        else:
            parts.append(generate_latest(_Families([metric])).decode())
    return "".join(parts).encode()


class _Families(Collector):
    """Already collected families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


# -- the collector ------------------------------------------------------------------


def _health(view: CollectorView) -> HealthStatus:
    """The manager's health; DESIGN §4 for a collector the manager never ran."""
    if view.status is not None:
        return view.status.health
    # Actual is "stopped": healthy when that is what is wanted, else on its way.
    return HealthStatus.HEALTHY if view.desired == DesiredState.STOPPED else HealthStatus.DEGRADED


def _version() -> str:
    try:
        return importlib.metadata.version("reconciler")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_STATES = tuple(state.value for state in CollectorState)
_DESIRED = tuple(state.value for state in DesiredState)
_HEALTHS = tuple(health.value for health in HealthStatus)


class ReconcilerCollector(Collector):
    """The metric families of DESIGN §9, built from the reconciler at scrape time.

    Registers itself as a pass, action and manager-event listener of
    ``reconciler``; ``collect()`` must run in the reconciler's event-loop
    thread (it reads the loop's state without locks).
    """

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.version = _version()
        self._durations = _DurationHistogram(DURATION_BUCKETS_SECONDS)
        self._actions = {(action, result): 0 for action in ACTIONS for result in RESULTS}
        self._cpu: dict[str, _TreeCpu] = {}
        self._restarts: dict[str, _Monotonic] = {}
        reconciler.pass_listeners.append(self._durations.observe)
        reconciler.action_listeners.append(self._on_action)
        reconciler.manager.add_listener(self._on_manager_event)

    def _on_action(self, action: str, result: str) -> None:
        if (action, result) in self._actions:
            self._actions[action, result] += 1

    def _on_manager_event(self, event: ManagerEvent) -> None:
        # Every start and restart, the restart policy's included, is an action
        # of the controller and reaches us through ``_on_action``; a SIGKILL
        # inside a stop only as a manager event.
        if event.kind == "stopped" and event.forced:
            self._actions["kill", "success"] += 1
        elif event.kind == "failed" and event.forced:
            self._actions["kill", "error"] += 1

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes in a registry of our own; and without
        # describe() a registry with auto_describe would scrape to find out.
        return []

    def collect(self) -> list[Metric]:
        reconciler = self.reconciler
        # Read in one go, not lazily between families: in the loop thread and
        # with no await in between, the views, the spec snapshot and the
        # process trees all show the same moment.
        snapshot = reconciler.snapshot
        views = reconciler.views()
        tree_pids = reconciler.manager.all_tree_pids()
        families = [*self._collector_families(views, tree_pids), *self._spec_families(snapshot)]
        families.append(
            self._durations.family(RECONCILE_DURATION, "Duration of one pass of the loop.")
        )
        actions = SeriesFamily(ACTIONS_TOTAL)
        for (action, result), count in self._actions.items():
            actions.add((action, result), count)
        build = SeriesFamily(BUILD_INFO)
        build.add((self.version,), 1)
        return [*families, actions, build]

    def _collector_families(
        self, views: list[CollectorView], tree_pids: Mapping[str, list[int]]
    ) -> Iterator[Metric]:
        state = OneHotFamily(STATE, _STATES)
        desired = OneHotFamily(DESIRED_STATE, _DESIRED)
        health = OneHotFamily(HEALTH, _HEALTHS)
        up, uptime, start_time = SeriesFamily(UP), SeriesFamily(UPTIME), SeriesFamily(START_TIME)
        restarts, exit_code = SeriesFamily(RESTARTS), SeriesFamily(LAST_EXIT_CODE)
        backoff, cpu, memory = SeriesFamily(BACKOFF), SeriesFamily(CPU), SeriesFamily(MEMORY)
        applied = SeriesFamily(APPLIED_SPEC)
        known = {view.collector_id for view in views}
        for gone in self._cpu.keys() - known:
            del self._cpu[gone]
        for gone in self._restarts.keys() - known:
            del self._restarts[gone]

        running = CollectorState.RUNNING
        for view in views:
            cid, ctype = key = (view.collector_id, view.collector_type)
            current, status = view.state, view.status
            state.add_hot(key, current.value)
            desired.add_hot(key, view.desired.value)
            health.add_hot(key, _health(view).value)
            up.add(key, 1 if current == running else 0)
            count = 0
            if status is None:
                uptime.add(key, 0.0)
                backoff.add(key, 0.0)
            else:
                uptime.add(key, status.uptime_seconds)
                backoff.add(key, status.backoff_seconds)
                count = status.restart_count
                if status.start_time is not None:
                    start_time.add(key, status.start_time)
                if status.last_exit_code is not None:
                    exit_code.add(key, status.last_exit_code)
            restarts.add(key, self._restarts.setdefault(cid, _Monotonic()).update(count))
            cpu_seconds, rss_bytes = self._tree_usage(cid, tree_pids.get(cid, ()))
            cpu.add(key, cpu_seconds)
            memory.add(key, rss_bytes)
            if view.applied_spec_hash is not None:
                applied.add((cid, ctype, view.applied_spec_hash), 1)
        yield from (state, desired, up, health, uptime, start_time, restarts, exit_code)
        yield from (backoff, cpu, memory, applied)

    def _tree_usage(self, collector_id: str, pids: Iterable[int]) -> tuple[float, int]:
        """CPU seconds (monotonic) and resident bytes of one collector's process tree."""
        samples = {}
        for pid in pids:
            sample = _read_stat(pid)
            if sample is not None:
                samples[pid] = sample
        cpu_seconds = self._cpu.setdefault(collector_id, _TreeCpu()).update(samples)
        return cpu_seconds, sum(sample.rss_bytes for sample in samples.values())

    def _spec_families(self, snapshot: SpecSnapshot) -> Iterator[Metric]:
        valid, info, specs = SeriesFamily(SPEC_VALID), SeriesFamily(SPEC_INFO), SeriesFamily(SPECS)
        problems = snapshot.problems
        valid.add((DIRECTORY_KEY,), 0 if DIRECTORY_KEY in problems else 1)
        files = set()
        for loaded in snapshot.specs.values():
            name = loaded.path.name
            files.add(name)
            valid.add((name,), 0 if name in problems else 1)
            # The same spec_hash the loop records as applied: equal once converged.
            info.add((name, loaded.spec_hash), 1)
        for name in sorted(problems.keys() - files - {DIRECTORY_KEY}):
            valid.add((name,), 0)
        specs.add((), len(snapshot.specs))
        yield from (valid, info, specs)


# -- the listener ---------------------------------------------------------------------


def parse_address(address: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[::1]:9184`` for IPv6; an empty host: every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidSpec(f"metrics_address {address!r}: expected HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


class MetricsServer:
    """The read-only metrics listener of DESIGN §8: ``/metrics``, ``/healthz``, ``/readyz``.

    Everything runs in the event loop thread: a scrape reads in-memory state
    and ``/proc``, and costs the loop nothing between scrapes.
    """

    def __init__(self, reconciler: Reconciler, *, address: str) -> None:
        self.reconciler = reconciler
        self.address = address
        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ReconcilerCollector(reconciler)
        self.registry.register(self.collector)
        self.last_scrape_seconds = 0.0
        self._runner: web.AppRunner | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; return the bound host and port (the port picked when 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise Io(f"cannot listen on {self.address}: {exc.strerror or exc}") from exc
        self._runner = runner
        sockname = runner.addresses[0]
        host, port = str(sockname[0]), int(sockname[1])
        log.info(
            "metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        )
        return host, port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def scrape(self) -> bytes:
        """The exposition of the registry now (what ``GET /metrics`` returns)."""
        started = time.perf_counter()
        # A scrape allocates tens of thousands of short-lived objects at 1000
        # collectors; collecting them mid-scrape only adds to its latency, so
        # the collector waits until the scrape is done (same work, later).
        collecting = gc.isenabled()
        gc.disable()
        try:
            body = encode(self.registry)
        finally:
            if collecting:
                gc.enable()
        self.last_scrape_seconds = elapsed = time.perf_counter() - started
        if elapsed > SLOW_SCRAPE_SECONDS:
            log.warning("a metrics scrape took %.2f s in the event loop", elapsed)
        return body

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=self.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        # Gzip when the scraper asks (Prometheus does); aiohttp compresses a
        # body this large in an executor thread, off the event loop.
        response.enable_compression()
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.loop_alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="reconcile loop not running\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.reconciler.ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first reconcile not done\n")

    def loop_alive(self) -> bool:
        """Whether the reconcile loop is running (passing, or waiting to be woken).

        Not "passed recently": the loop only runs a pass when something may
        differ, and may rightly sleep for hours. A pass is synchronous, so a
        loop stuck in one would block this handler too; what can go wrong is
        ``run()`` having ended. ``Reconciler.alive`` says so where it exists;
        else the loop's task is looked for among the event loop's tasks.
        """
        alive = getattr(self.reconciler, "alive", None)
        if alive is not None:
            return bool(alive() if callable(alive) else alive)
        run_code = Reconciler.run.__code__
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            frame = getattr(coro, "cr_frame", None)
            if (
                getattr(coro, "cr_code", None) is run_code
                and frame is not None
                and frame.f_locals.get("self") is self.reconciler
            ):
                return True
        return False
