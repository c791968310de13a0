"""The metric families of DESIGN §9 and the text they write (``SeriesFamily``,
``OneHotFamily``, ``WrittenFamily``, ``HistogramFamily``): the same bytes as
``generate_latest``, at a fraction of its cost; and the ``Registry`` that
``MetricsServer`` serves.

None of this imports prometheus_client: the package and the standard
library it loads (``http.server``, ``urllib.request``, ``wsgiref``, ``email``)
cost the daemon 2.4 MiB of its memory and ~40 ms of its start, for
nothing it needs to write the text. A family still reads as a
prometheus_client ``Metric`` (``name``, ``documentation``, ``type``,
``unit``, ``samples``), so ``generate_latest`` and any registry of an
embedder take it; prometheus_client is imported when something asks for
``samples`` or a registry holds a family this module did not make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.metrics.constants import GO_EXPONENT_FROM, go_float

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

# -- families -----------------------------------------------------------------------


class Family:
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
STATE = Family(
    "reconciler_collector_state",
    kind="gauge",
    documentation="1 for the collector's current state, 0 for the other six.",
    labels=(*_ID, "state"),
)
DESIRED_STATE = Family(
    "reconciler_collector_desired_state",
    kind="gauge",
    documentation="1 for the collector's desired state.",
    labels=(*_ID, "state"),
)
UP = Family(
    "reconciler_collector_up",
    kind="gauge",
    documentation="1 while the collector is running.",
    labels=_ID,
)
HEALTH = Family(
    "reconciler_collector_health",
    kind="gauge",
    documentation="1 for the collector's current health.",
    labels=(*_ID, "health"),
)
UPTIME = Family(
    "reconciler_collector_uptime_seconds",
    kind="gauge",
    documentation="Seconds since the current process started (0 when none).",
    labels=_ID,
)
START_TIME = Family(
    "reconciler_collector_start_time_seconds",
    kind="gauge",
    documentation="Unix time the current process started (absent when none).",
    labels=_ID,
)
RESTARTS = Family(
    "reconciler_collector_restarts_total",
    kind="counter",
    documentation="Restarts of the collector, automatic and asked for.",
    labels=_ID,
)
LAST_EXIT_CODE = Family(
    "reconciler_collector_last_exit_code",
    kind="gauge",
    documentation="Last exit code (negative: killed by that signal; absent before the first).",
    labels=_ID,
)
BACKOFF = Family(
    "reconciler_collector_backoff_seconds",
    kind="gauge",
    documentation="Delay before the next automatic restart (0 when none is pending).",
    labels=_ID,
)
CPU = Family(
    "reconciler_collector_cpu_seconds_total",
    kind="counter",
    documentation="CPU time of the collector's process tree.",
    labels=_ID,
)
MEMORY = Family(
    "reconciler_collector_resident_memory_bytes",
    kind="gauge",
    documentation="Resident memory of the collector's process tree.",
    labels=_ID,
)
APPLIED_SPEC = Family(
    "reconciler_collector_applied_spec_info",
    kind="gauge",
    documentation="1, labelled with the hash of the spec now applied.",
    labels=(*_ID, "hash"),
)
READY = Family(
    "reconciler_collector_ready",
    kind="gauge",
    documentation="1 while the collector is ready (ran min_ready_seconds, ready_check passed).",
    labels=_ID,
)
SPEC_VALID = Family(
    "reconciler_spec_valid",
    kind="gauge",
    documentation='0 while that spec file fails to parse or validate; file="." is the directory.',
    labels=("file",),
)
SPEC_INFO = Family(
    "reconciler_spec_info",
    kind="gauge",
    documentation="1, labelled with the hash of the file's last valid content.",
    labels=("file", "hash"),
)
SPEC_REJECTED = Family(
    "reconciler_spec_rejected",
    kind="gauge",
    documentation="1, labelled with the hash of file content rolled back after a failed rollout.",
    labels=("file", "hash"),
)
ROLLOUT_HELD = Family(
    "reconciler_rollout_held",
    kind="gauge",
    documentation="1 while waves of a push are held after a failed rollout.",
)
SPECS = Family("reconciler_specs", kind="gauge", documentation="Spec files loaded.")
ACTIONS_TOTAL = Family(
    "reconciler_actions_total",
    kind="counter",
    documentation="Actions on collectors, by action and result.",
    labels=("action", "result"),
)
STATE_FILE_ERRORS = Family(
    "reconciler_state_file_errors_total",
    kind="counter",
    documentation="State files that could not be read (and were moved aside) or written.",
)
BUILD_INFO = Family(
    "reconciler_build_info",
    kind="gauge",
    documentation="Version of the reconciler.",
    labels=("version",),
)
RECONCILE_DURATION = Family(
    "reconciler_reconcile_duration_seconds",
    kind="histogram",
    documentation="Duration of one pass of the loop.",
)

_SPECIAL = ("\\", "\n", '"')


def escape_label_value(value: str) -> str:
    """A label value as the text format writes it (``generate_latest``'s escaping)."""
    if any(char in value for char in _SPECIAL):
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def value_text(value: float) -> str:
    """A sample's value as the text format writes it (``floatToGoString``), faster.

    Most are the 0 and 1 of a state set. Below 10⁶ and not -Inf or NaN,
    ``floatToGoString`` is ``repr``; above, Go writes an exponent sooner.
    """
    if value == 1:
        return "1.0"
    if value == 0:
        return "0.0"
    if _MINUS_INF < value < GO_EXPONENT_FROM:
        return repr(float(value))
    return go_float(value)


_MINUS_INF = float("-inf")


def one_hot_lines(family: Family, choices: Sequence[str]) -> dict[str, Callable[..., str]]:
    """Current choice -> the lines of one state set for it, a format taking the other labels.

    The choice label is the family's last; the block is 1 for ``current`` and 0
    for every other choice, in ``choices`` order.
    """
    marks = [f"\0{i}\0" for i in range(len(family.labels) - 1)]
    lines: dict[str, Callable[..., str]] = {}
    for current in choices:
        block = "".join(
            family.template.format(*marks, choice, "1.0" if choice == current else "0.0")
            for choice in choices
        )
        block = block.replace("{", "{{").replace("}", "}}")
        for index, mark in enumerate(marks):
            block = block.replace(mark, f"{{{index}}}")
        lines[current] = block.format
    return lines


def sample_type() -> type[Sample]:
    """prometheus_client's ``Sample``, imported when something first asks for samples."""
    from prometheus_client.samples import Sample

    return Sample


class TextFamily:
    """A family that writes its own text exposition (``text()``); ``encode`` uses it.

    It has what a prometheus_client ``Metric`` has for ``generate_latest``
    and any registry reading it (``name``, ``documentation``, ``type``,
    ``unit``, ``samples``); ``samples`` is built when something asks for it.
    """

    family: Family
    unit = ""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.name = family.metric_name
        self.documentation = family.documentation
        self.type = family.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def text(self) -> str:
        """This family in the text exposition format."""
        raise NotImplementedError

    @property
    def samples(self) -> list[Sample]:
        raise NotImplementedError


class SeriesFamily(TextFamily):
    """A family whose samples are kept as (label values, value) rows.

    At 1000 collectors a scrape has ~23 000 samples: building a ``Sample``
    (a named tuple with a dict of labels) for each, and then
    ``generate_latest`` re-validating every name and sorting every sample's
    labels, costs ~10 µs a sample on a small machine — the whole 100 ms
    budget twice over. ``text()`` writes the same bytes as ``generate_latest``
    (tested) from the rows and a per-family template.
    """

    def __init__(self, family: Family) -> None:
        super().__init__(family)
        self.rows: list[tuple[tuple[str, ...], float]] = []
        self._text: str | None = None

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.rows.append((labels, value))
        self._text = None

    @property
    def samples(self) -> list[Sample]:
        name, labels, sample = self.family.sample_name, self.family.labels, sample_type()
        return [
            sample(name, dict(zip(labels, row, strict=True)), value) for row, value in self.rows
        ]

    def text(self) -> str:
        if self._text is None:
            self._text = self.family.header + "".join(self._lines())
        return self._text

    def _lines(self) -> list[str]:
        line, rows = self.family.template.format, self.rows
        # Ids, types, hashes and state names never need escaping: check once, in C.
        every_label = "\0".join(map("\0".join, map(itemgetter(0), rows)))
        if any(char in every_label for char in _SPECIAL):
            rows = [(tuple(map(escape_label_value, labels)), value) for labels, value in rows]
        return [line(*labels, value_text(value)) for labels, value in rows]


class OneHotFamily(SeriesFamily):
    """A state set: per collector, 1 for its current choice and 0 for each other.

    Kept as one (labels, current choice) row per collector and written as one
    block of lines each.
    """

    def __init__(self, family: Family, choices: tuple[str, ...]) -> None:
        super().__init__(family)
        self.choices = choices
        self.hot: list[tuple[tuple[str, ...], str]] = []
        self._blocks = one_hot_lines(family, choices)

    def add_hot(self, labels: tuple[str, ...], current: str) -> None:
        self.hot.append((labels, current))
        self._text = None

    @property
    def samples(self) -> list[Sample]:
        name, names, sample = self.family.sample_name, self.family.labels, sample_type()
        return [
            sample(name, dict(zip(names, (*labels, choice), strict=True)), int(choice == current))
            for labels, current in self.hot
            for choice in self.choices
        ]

    def _lines(self) -> list[str]:
        hot, blocks = self.hot, self._blocks
        every_label = "\0".join(map("\0".join, map(itemgetter(0), hot)))
        if any(char in every_label for char in _SPECIAL):
            hot = [(tuple(map(escape_label_value, labels)), now) for labels, now in hot]
        return [blocks[now](*labels) for labels, now in hot]


class WrittenFamily(TextFamily):
    """A family whose lines are already written (``reconciler.metrics.blocks``), with a
    function that makes its samples when something asks for them.

    ``revision`` is new whenever the text is: ``Exposition`` tells an unchanged
    family by it, without a copy of the text kept to compare. The text is
    joined when first asked for.
    """

    def __init__(
        self,
        family: Family,
        *,
        lines: list[str],
        revision: int,
        samples: Callable[[], list[Sample]],
    ) -> None:
        super().__init__(family)
        self.revision = revision
        self._lines: list[str] | None = lines
        self._written = ""
        self._make_samples = samples

    @property
    def samples(self) -> list[Sample]:
        return self._make_samples()

    def text(self) -> str:
        if self._lines is not None:
            self._written = self.family.header + "".join(self._lines)
            self._lines = None
        return self._written


class HistogramFamily(TextFamily):
    """A histogram without labels: cumulative buckets, then ``_count`` and ``_sum``, as
    ``generate_latest`` writes a prometheus_client ``HistogramMetricFamily``."""

    def __init__(
        self, family: Family, *, buckets: Sequence[tuple[float, float]], sum_value: float
    ) -> None:
        super().__init__(family)
        self.buckets = tuple(buckets)
        """(upper bound, cumulative count), the last bound +Inf."""
        self.sum_value = sum_value

    def _rows(self) -> Iterator[tuple[str, str | None, float]]:
        """(sample name, its ``le`` label or None, value), in ``generate_latest``'s order."""
        name = self.family.sample_name
        for bound, count in self.buckets:
            yield f"{name}_bucket", go_float(bound), count
        yield f"{name}_count", None, self.buckets[-1][1]
        yield f"{name}_sum", None, self.sum_value

    @property
    def samples(self) -> list[Sample]:
        sample = sample_type()
        return [
            sample(name, {} if le is None else {"le": le}, value)
            for name, le, value in self._rows()
        ]

    def text(self) -> str:
        lines = [self.family.header]
        for name, le, value in self._rows():
            labels = "" if le is None else f'{{le="{le}"}}'
            lines.append(f"{name}{labels} {go_float(value)}\n")
        return "".join(lines)


class Collects(Protocol):
    """What a registry holds, and is: anything with ``collect()`` (a prometheus_client
    ``Collector`` or ``CollectorRegistry`` too)."""

    def collect(self) -> Iterable[Any]: ...


class Registry:
    """The collectors one ``/metrics`` serves, in the order they were registered.

    ``MetricsServer`` serves one of these rather than a prometheus_client
    ``CollectorRegistry``, so serving needs no prometheus_client; an
    embedder's own ``Collector`` may be registered here all the same.
    """

    def __init__(self) -> None:
        self._collectors: list[Collects] = []

    def register(self, collector: Collects) -> None:
        if any(kept is collector for kept in self._collectors):
            raise ValueError(f"{collector!r} is registered already")
        self._collectors.append(collector)

    def unregister(self, collector: Collects) -> None:
        self._collectors = [kept for kept in self._collectors if kept is not collector]

    def collect(self) -> Iterator[Any]:
        for collector in list(self._collectors):
            yield from collector.collect()


def texts(registry: Collects) -> list[str]:
    """The text exposition of ``registry``, one string per family.

    A ``TextFamily`` writes itself; anything else a registry may hold goes
    through ``generate_latest`` (and so imports prometheus_client).
    """
    return [
        metric.text() if isinstance(metric, TextFamily) else _generate_latest(metric)
        for metric in registry.collect()
    ]


def pieces(registry: Collects) -> list[str | WrittenFamily]:
    """``texts(registry)``, but a ``WrittenFamily`` as itself: it is told unchanged by its
    revision, and its text is joined only if it changed (``Exposition``)."""
    return [
        metric
        if isinstance(metric, WrittenFamily)
        else metric.text()
        if isinstance(metric, TextFamily)
        else _generate_latest(metric)
        for metric in registry.collect()
    ]


def encode(registry: Collects) -> bytes:
    """The text exposition of ``registry``: what ``generate_latest`` writes, faster."""
    return "".join(texts(registry)).encode()


def _generate_latest(metric: Any) -> str:
    from prometheus_client import generate_latest

    class _One:
        def collect(self) -> list[Any]:
            return [metric]

    return generate_latest(_One()).decode()
