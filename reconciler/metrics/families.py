"""The metric families of DESIGN §9 and the text they write (``SeriesFamily``,
``OneHotFamily``, ``WrittenFamily``): the same bytes as ``generate_latest``, at a
fraction of its cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from reconciler.metrics.constants import go_float

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
RECONCILE_DURATION = "reconciler_reconcile_duration_seconds"

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
    if _MINUS_INF < value < _GO_EXPONENT_FROM:
        return repr(float(value))
    return go_float(value)


_MINUS_INF = float("-inf")
_GO_EXPONENT_FROM = 1e6


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


class TextFamily(Metric):
    """A family that writes its own text exposition (``text()``); ``encode`` uses it.

    ``samples`` still gives prometheus_client's view of it (for
    ``generate_latest`` and anything else reading a registry), built when
    something asks for it.
    """

    family: Family

    def __init__(self, family: Family) -> None:
        super().__init__(family.metric_name, family.documentation, family.kind)
        self.family = family

    def text(self) -> str:
        """This family in the text exposition format."""
        raise NotImplementedError

    @property
    def samples(self) -> list[Sample]:
        raise NotImplementedError

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ assigns an empty list; a TextFamily's samples are its rows.
        if value:
            raise AttributeError("a TextFamily's samples are made from its rows")


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
        name, labels = self.family.sample_name, self.family.labels
        return [
            Sample(name, dict(zip(labels, row, strict=True)), value) for row, value in self.rows
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise AttributeError("a SeriesFamily's samples are its rows")

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

    def _lines(self) -> list[str]:
        hot, blocks = self.hot, self._blocks
        every_label = "\0".join(map("\0".join, map(itemgetter(0), hot)))
        if any(char in every_label for char in _SPECIAL):
            hot = [(tuple(map(escape_label_value, labels)), now) for labels, now in hot]
        return [blocks[now](*labels) for labels, now in hot]


class WrittenFamily(TextFamily):
    """A family whose text is already written (``reconciler.metrics.blocks``), with a
    function that makes its samples when something asks for them."""

    def __init__(
        self, family: Family, *, text: str, samples: Callable[[], list[Sample]]
    ) -> None:
        super().__init__(family)
        self._written = text
        self._make_samples = samples

    @property
    def samples(self) -> list[Sample]:
        return self._make_samples()

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise AttributeError("a WrittenFamily's samples are made from its rows")

    def text(self) -> str:
        return self._written


def texts(registry: CollectorRegistry) -> list[str]:
    """The text exposition of ``registry``, one string per family.

    A ``TextFamily`` writes itself; anything else a registry may hold goes
    through ``generate_latest``.
    """
    return [
        metric.text()
        if isinstance(metric, TextFamily)
        else generate_latest(_Families([metric])).decode()
        for metric in registry.collect()
    ]


def encode(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``: what ``generate_latest`` writes, faster."""
    return "".join(texts(registry)).encode()


class _Families(Collector):
    """Already collected families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
