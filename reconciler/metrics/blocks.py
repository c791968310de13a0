"""Each collector's lines of the exposition, kept from scrape to scrape (``CollectorBlocks``).

At 1000 collectors a scrape writes ~23 000 lines; writing them all anew
took ~25 ms of an ~85 ms scrape. Between two scrapes a collector's state,
desired state, health, start time, restarts, exit code, applied hash and
readiness seldom change; its uptime always does, its CPU and memory while it
works. So each collector keeps a block: its lines of each of the thirteen
per-collector families and the values they were written from. A scrape
gives each collector's values (``add``: its ``Static`` values and the four
that move), the block rewrites the lines whose values differ (the uptime's
every time), and ``families()`` gives each family's lines in collector order,
with a revision that is new whenever one of them changed; the text is joined
only when asked for, and not kept (``Exposition`` tells it unchanged by its
revision).
The bytes are those ``generate_latest`` writes for the same samples (tested);
the samples themselves are made only when something asks.

A scrape of an idle fleet makes no new object per collector that outlives
the comparison (the values of a scrape are kept in a few flat lists): what a
scrape keeps alive is what the garbage collector traces and promotes, and at
~100 000 long-lived objects a full collection takes 40-60 ms.

Used by ``ReconcilerCollector``, in the event-loop thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler.metrics.families import (
    APPLIED_SPEC,
    BACKOFF,
    CPU,
    DESIRED_STATE,
    HEALTH,
    LAST_EXIT_CODE,
    MEMORY,
    READY,
    RESTARTS,
    START_TIME,
    STATE,
    UP,
    UPTIME,
    Family,
    WrittenFamily,
    escape_label_value,
    one_hot_lines,
    sample_type,
    value_text,
)
from reconciler.state import CollectorState, DesiredState, HealthStatus

if TYPE_CHECKING:
    from prometheus_client.samples import Sample


class Static(NamedTuple):
    """What one collector's lines but four are written from; equal until something happens."""

    collector_id: str
    collector_type: str
    state: str
    desired: str
    health: str
    up: int
    start_time: float | None
    """``None``: no process (the series is absent, not 0)."""
    restarts: int
    last_exit_code: int | None
    applied_hash: str | None
    ready: int


STATES = tuple(state.value for state in CollectorState)
DESIRED = tuple(state.value for state in DesiredState)
HEALTHS = tuple(health.value for health in HealthStatus)

# The per-collector families, in exposition order, with the value each shows
# (a ``Static`` field, or one of the four that move) and, for a state set, its choices.
_LAYOUT: tuple[tuple[Family, str, tuple[str, ...] | None], ...] = (
    (STATE, "state", STATES),
    (DESIRED_STATE, "desired", DESIRED),
    (UP, "up", None),
    (HEALTH, "health", HEALTHS),
    (UPTIME, "uptime_seconds", None),
    (START_TIME, "start_time", None),
    (RESTARTS, "restarts", None),
    (LAST_EXIT_CODE, "last_exit_code", None),
    (BACKOFF, "backoff_seconds", None),
    (CPU, "cpu_seconds", None),
    (MEMORY, "rss_bytes", None),
    (APPLIED_SPEC, "applied_hash", None),
    (READY, "ready", None),
)
_MOVING = ("uptime_seconds", "backoff_seconds", "cpu_seconds", "rss_bytes")
_SLOT = {field: slot for slot, (_, field, _) in enumerate(_LAYOUT)}
_UPTIME, _BACKOFF, _CPU, _MEMORY = (_SLOT[name] for name in _MOVING)
_ALL_CHANGED = [True] * len(_LAYOUT)
_REVISIONS = itertools.count()
"""Revisions of the families' texts: unique in the process, so no two blocks share one."""
_ONE_HOT = {
    slot: one_hot_lines(family, choices)
    for slot, (family, _, choices) in enumerate(_LAYOUT)
    if choices is not None
}


def _prefix(family: Family, collector_id: str, collector_type: str) -> str:
    """``name{id="…",type="…"} ``: a line of ``family`` up to its value."""
    return family.template.format(collector_id, collector_type, "")[:-1]


def _rewrite(line: str, value: float) -> str:
    """``line`` (``name{…} old``) with ``value`` in place of its old one."""
    return f"{line[: line.rindex(' ') + 1]}{value_text(value)}\n"


class _Block:
    """One collector's lines, one per family ("" where it has no sample)."""

    __slots__ = ("backoff", "cpu", "key", "lines", "rss")

    def __init__(self) -> None:
        self.key: Static | None = None
        self.lines = [""] * len(_LAYOUT)
        self.backoff: float | None = None
        self.cpu: float | None = None
        self.rss: float | None = None

    def write_static(self, key: Static) -> None:
        """Every line but the four that move, from ``key``."""
        cid, ctype = escape_label_value(key.collector_id), escape_label_value(key.collector_type)
        lines = self.lines
        for slot, (family, field, _) in enumerate(_LAYOUT):
            if field in _MOVING:
                # Its labels and a space: ``add()`` writes the value after the line's last
                # space (a value has none), so no prefix is kept besides the line.
                lines[slot] = _prefix(family, cid, ctype) + "\n"
                continue
            value = getattr(key, field)
            if slot in _ONE_HOT:
                lines[slot] = _ONE_HOT[slot][value](cid, ctype)
            elif value is None:
                lines[slot] = ""
            elif family is APPLIED_SPEC:
                lines[slot] = family.template.format(cid, ctype, escape_label_value(value), "1.0")
            else:
                lines[slot] = family.template.format(cid, ctype, value_text(value))
        # The labels may have changed (a new type): write the others again too.
        self.backoff = self.cpu = self.rss = None
        self.key = key


class CollectorBlocks:
    """The blocks of every known collector; a collector's goes with it.

    Per scrape: ``add()`` for each collector in exposition order, then
    ``families()``.
    """

    def __init__(self) -> None:
        self._blocks: dict[str, _Block] = {}
        self.rewritten = 0
        """Blocks whose kept lines were written again at the last scrape (for benchmarks)."""
        self.rejoined = 0
        """Families whose text changed (a new revision) at the last scrape (for benchmarks)."""
        self._revisions: list[int] = [next(_REVISIONS) for _ in _LAYOUT]
        """Each family's revision at the last scrape: new whenever its text is."""
        self._last_lines: list[list[str]] = []
        self._start_scrape()

    def _start_scrape(self) -> None:
        self._lines: list[list[str]] = []
        self._keys: list[Static] = []
        self._moving: tuple[list[float], list[float], list[float], list[float]] = (
            [], [], [], []
        )  # fmt: skip
        self._rewritten = 0
        self._changed = [False] * len(_LAYOUT)
        """Whether a line of that family was written at this scrape."""

    def add(
        self,
        key: Static,
        *,
        uptime_seconds: float,
        backoff_seconds: float,
        cpu_seconds: float,
        rss_bytes: float,
    ) -> None:
        """One collector's values at this scrape."""
        block = self._blocks.get(key.collector_id)
        if block is None:
            block = self._blocks[key.collector_id] = _Block()
        kept, changed = block.key, self._changed
        if kept is None or key != kept:
            block.write_static(key)
            self._rewritten += 1
            changed[:] = _ALL_CHANGED
        else:
            key = kept  # the block's, not the caller's equal one: nothing new is kept alive
        lines = block.lines
        lines[_UPTIME] = _rewrite(lines[_UPTIME], uptime_seconds)
        changed[_UPTIME] = True
        if backoff_seconds != block.backoff:
            block.backoff = backoff_seconds
            lines[_BACKOFF] = _rewrite(lines[_BACKOFF], backoff_seconds)
            changed[_BACKOFF] = True
        if cpu_seconds != block.cpu:
            block.cpu = cpu_seconds
            lines[_CPU] = _rewrite(lines[_CPU], cpu_seconds)
            changed[_CPU] = True
        if rss_bytes != block.rss:
            block.rss = rss_bytes
            lines[_MEMORY] = _rewrite(lines[_MEMORY], rss_bytes)
            changed[_MEMORY] = True
        self._lines.append(lines)
        self._keys.append(key)
        moving = self._moving
        moving[0].append(uptime_seconds)
        moving[1].append(backoff_seconds)
        moving[2].append(cpu_seconds)
        moving[3].append(rss_bytes)

    def families(self) -> list[WrittenFamily]:
        """The thirteen per-collector families of DESIGN §9 for this scrape's collectors."""
        blocks, lines_of, keys, moving = self._blocks, self._lines, self._keys, self._moving
        if len(blocks) > len(keys):
            known = {key.collector_id for key in keys}
            for gone in [cid for cid in blocks if cid not in known]:
                del blocks[gone]
        # The same blocks in the same order (a list of the same lists) and no
        # line of a family written: its text is the last scrape's, not joined again.
        same_collectors = lines_of == self._last_lines
        changed, revisions = self._changed, self._revisions
        result = []
        for slot, (family, _, _) in enumerate(_LAYOUT):
            if changed[slot] or not same_collectors:
                revisions[slot] = next(_REVISIONS)
            result.append(
                WrittenFamily(
                    family,
                    lines=[lines[slot] for lines in lines_of],
                    revision=revisions[slot],
                    samples=_sampler(slot, keys, moving),
                )
            )
        self.rejoined = sum(changed) if same_collectors else len(_LAYOUT)
        self.rewritten = self._rewritten
        self._last_lines = lines_of
        self._start_scrape()
        return result


def _sampler(
    slot: int, keys: Sequence[Static], moving: tuple[Sequence[float], ...]
) -> Callable[[], list[Sample]]:
    """The samples of one family, as ``generate_latest`` would be given them."""
    family, field, choices = _LAYOUT[slot]
    name, label_names = family.sample_name, family.labels

    def samples() -> list[Sample]:
        values: Sequence[Any] = (
            moving[_MOVING.index(field)]
            if field in _MOVING
            else [getattr(key, field) for key in keys]
        )
        result: list[Sample] = []
        sample = sample_type()
        for key, value in zip(keys, values, strict=True):
            ids = {"id": key.collector_id, "type": key.collector_type}
            if choices is not None:
                choice_label = label_names[-1]
                result.extend(
                    sample(name, {**ids, choice_label: choice}, int(choice == value))
                    for choice in choices
                )
            elif value is None:
                continue
            elif family is APPLIED_SPEC:
                result.append(sample(name, {**ids, "hash": value}, 1))
            else:
                result.append(sample(name, ids, value))
        return result

    return samples
