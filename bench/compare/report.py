"""The rows of the comparison, their targets, and the Markdown table (and JSON) of a run.

Used by ``bench/compare_bench.py``. Each row names a metric of ``compare.rows.Figures`` and how
to summarise it: ``scalar`` is one value per round (median over the rounds, their range in
brackets), ``median`` and ``p99`` pool every sample of every round (nearest rank: below 51
samples p99 is the largest one). The target of a row is the issue's, for
the reconciler; "best" names the tool with the lowest figure (lower is better on every row).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from figures import percentile

from compare.rows import Figures, Settings

TOOLS_IN_TABLE = ("supervisord", "circus", "reconciler")
OURS = "reconciler"


@dataclass(frozen=True)
class Condition:
    """Part of a target: below a fixed number, or below (at most) a peer's figure."""

    bound: float | None = None
    peer: str | None = None
    inclusive: bool = False

    def holds(self, value: float, central: dict[str, float]) -> bool | None:
        limit = self.bound if self.peer is None else central.get(self.peer)
        if limit is None:
            return None
        return value <= limit if self.inclusive else value < limit


@dataclass(frozen=True)
class Row:
    label: str
    metric: str
    stat: str  # "scalar" | "median" | "p99"
    digits: int
    target: str = ""
    conditions: tuple[Condition, ...] = ()
    ranked: bool = True
    """Whether "best" means anything here (not for counts that depend on each tool's policy)."""
    ours_only: str = ""
    """For a row the peers cannot have: what their cells say instead."""
    group: str = ""
    """The ``--rows`` group that measures it."""


def issue_rows(settings: Settings) -> list[Row]:
    """Every row of the issue, labelled with the sizes of this run."""
    s = settings
    idle = f"{s.idle_seconds:g} s"
    below_supervisord = Condition(peer="supervisord")
    at_most_supervisord = Condition(peer="supervisord", inclusive=True)
    no_metrics = "none (no /metrics)"
    return [
        Row(f"idle CPU, {s.fleet} programs, {idle}: % of a core (ticks)", "idle_cpu", "scalar",
            3, "< supervisord and < 0.05", (below_supervisord, Condition(0.05)), group="fleet"),
        Row(f"idle CPU, {s.fleet} programs, {idle}: % of a core (schedstat ns)", "idle_cpu_ns",
            "scalar", 3, "< supervisord and < 0.05", (below_supervisord, Condition(0.05)),
            group="fleet"),
        Row(f"idle wake-ups, {s.fleet} programs: context switches / s", "idle_wakeups", "scalar",
            1, group="fleet"),
        Row(f"daemon RSS, {s.fleet} programs: MiB", "rss", "scalar", 1, "<= supervisord",
            (at_most_supervisord,), group="fleet"),
        Row(f"daemon USS, {s.fleet} programs: MiB", "uss", "scalar", 1, group="fleet"),
        Row("daemon threads", "threads", "scalar", 0, group="fleet"),
        Row(f"cold start, {s.small} programs -> all exec'd: s", f"cold_{s.small}", "scalar", 3,
            group="cold"),
        Row(f"cold start, {s.fleet} programs -> all exec'd: s", f"cold_{s.fleet}", "scalar", 3,
            "< circus", (Condition(peer="circus"),), group="fleet"),
        Row(f"cold start, {s.large} programs -> all exec'd: s", f"cold_{s.large}", "scalar", 3,
            "< 3", (Condition(3.0),), group="large"),
        Row(f"daemon CPU spent by then ({s.large} programs): s", f"cold_cpu_{s.large}", "scalar",
            2, group="large"),
        Row(f"daemon RSS, {s.large} programs: MiB", f"rss_{s.large}", "scalar", 1,
            "<= supervisord", (Condition(peer="supervisord", inclusive=True),), group="large"),
        Row(f"crash storm: CPU, {s.storm_programs} programs exiting after 0.1 s, "
            f"{s.storm_seconds:g} s: % of a core", "storm_cpu", "scalar", 2, group="storm"),
        Row("crash storm: restarts in that window (each tool's own backoff)", "storm_restarts",
            "scalar", 0, ranked=False, group="storm"),
        Row("crash storm: CPU per restart, ms", "storm_cpu_per_restart_ms", "scalar", 2,
            "<= supervisord", (at_most_supervisord,), group="storm"),
        Row(f"no-op control command round trip (status), {s.fleet} programs: ms, median",
            "ctl_ms", "median", 1, "< 60", (Condition(60.0),), group="fleet"),
        Row("no-op control command round trip: ms, p99", "ctl_ms", "p99", 1, group="fleet"),
        Row(f"apply one new program, N={s.apply_programs} (file -> exec): ms, median", "apply_ms",
            "median", 1, "< 20", (Condition(20.0),), group="apply"),
        Row("apply one new program: ms, p99", "apply_ms", "p99", 1, "< 50", (Condition(50.0),),
            group="apply"),
        Row(f"crash -> replacement exec'd, {s.fleet} programs: ms, median", "crash_ms", "median",
            2, "< 5", (Condition(5.0),), group="fleet"),
        Row("crash -> replacement exec'd: ms, p99", "crash_ms", "p99", 2, "< 15",
            (Condition(15.0),), group="fleet"),
        Row(f"/metrics scrape, {s.large} collectors: ms, median", f"scrape_ms_{s.large}",
            "median", 1, ours_only=no_metrics, group="large"),
        Row(f"/metrics scrape, {s.large} collectors: ms, p99", f"scrape_ms_{s.large}", "p99", 1,
            "< 50", (Condition(50.0),), ours_only=no_metrics, group="large"),
        Row(f"/metrics: CPU per scrape, {s.large} collectors: ms", f"scrape_cpu_ms_{s.large}",
            "scalar", 1, ours_only=no_metrics, group="large"),
        Row(f"CPU at one scrape / 15 s, {s.large} collectors: % of a core",
            f"scrape_cpu_15s_{s.large}", "scalar", 3, "< 0.5", (Condition(0.5),),
            ours_only=no_metrics, group="large"),
    ]


def stop_rows() -> list[Row]:
    """Rows of ``--rows stop,leak`` (not in the issue; kept from the first comparison)."""
    return [
        Row("open fds, fleet", "fds", "scalar", 0, group="fleet"),
        Row("shutdown of the fleet (programs obey SIGTERM): s", "shutdown", "scalar", 2,
            group="fleet"),
        Row("stop-all, 50 TERM-ignoring programs, graceful 1 s: s", "stop_all", "scalar", 2,
            group="stop"),
        Row("processes of that tree alive 3 s after", "stop_all_left", "scalar", 0, group="stop"),
        Row("the same, supervisord programs all in one [group:]: s", "stop_all_grouped",
            "scalar", 2, group="stop"),
        Row("grandchildren left of 4, tool defaults", "leak_default", "scalar", 0, group="leak"),
        Row("grandchildren left of 4, group options (stopasgroup, stop_children)", "leak_group",
            "scalar", 0, group="leak"),
    ]


def central(values: list[float], stat: str) -> float:
    if stat == "p99":
        return percentile(values, 0.99)
    return statistics.median(values)


def render(values: list[float], row: Row) -> str:
    middle = f"{central(values, row.stat):.{row.digits}f}"
    if row.stat == "scalar" and len(values) > 1 and min(values) != max(values):
        return f"{middle} ({min(values):.{row.digits}f}-{max(values):.{row.digits}f})"
    if row.stat != "scalar":
        return f"{middle} (n={len(values)})" if row.stat == "median" else middle
    return middle


@dataclass
class Line:
    """One row of a run: the cells, the central values, and the verdicts."""

    row: Row
    cells: dict[str, str]
    values: dict[str, float]
    met: str
    best: str


def evaluate(figures: Figures, rows: list[Row], tools: list[str]) -> list[Line]:
    lines = []
    for row in rows:
        cells, values = {}, {}
        for tool in TOOLS_IN_TABLE:
            samples = figures.get(tool, row.metric)
            error = figures.errors[tool].get(row.group)
            if tool not in tools:
                cells[tool] = "not run"
            elif row.ours_only and tool != OURS:
                cells[tool] = row.ours_only
            elif samples:
                cells[tool] = render(samples, row)
                values[tool] = central(samples, row.stat)
            else:
                cells[tool] = f"failed: {error}" if error else "-"
        lines.append(Line(row, cells, values, verdict(row, values), best_of(row, values)))
    return lines


def verdict(row: Row, values: dict[str, float]) -> str:
    if not row.conditions:
        return ""
    if OURS not in values:
        return "?"
    held = [condition.holds(values[OURS], values) for condition in row.conditions]
    if False in held:
        return "no"
    return "?" if None in held else "yes"


def best_of(row: Row, values: dict[str, float]) -> str:
    if not row.ranked or row.ours_only or len(values) < 2:
        return ""
    lowest = min(values.values())
    return ", ".join(tool for tool in TOOLS_IN_TABLE if values.get(tool) == lowest)


def markdown(lines: list[Line]) -> str:
    header = ["row", *TOOLS_IN_TABLE, "target (reconciler)", "met", "best"]
    text = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for line in lines:
        cells = [line.row.label, *(line.cells[t] for t in TOOLS_IN_TABLE)]
        cells += [line.row.target, line.met, line.best]
        text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text)


def as_json(lines: list[Line]) -> list[dict[str, object]]:
    return [
        {
            "label": line.row.label,
            "metric": line.row.metric,
            "stat": line.row.stat,
            "group": line.row.group,
            "cells": line.cells,
            "values": line.values,
            "target": line.row.target,
            "met": line.met,
            "best": line.best,
        }
        for line in lines
    ]


def per_round(figures: Figures, rows: list[Row], tools: list[str]) -> list[str]:
    """The values behind each median of a scalar row, so that the noise between rounds shows."""
    seen: set[str] = set()
    lines = []
    for row in rows:
        if row.stat != "scalar" or row.metric in seen:
            continue
        seen.add(row.metric)
        cells = [
            f"{tool} " + ", ".join(f"{v:.3g}" for v in figures.get(tool, row.metric))
            for tool in TOOLS_IN_TABLE
            if tool in tools and figures.get(tool, row.metric)
        ]
        if cells:
            lines.append(f"- {row.metric}: " + "; ".join(cells))
    return lines
