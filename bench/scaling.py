"""How the reconciler's costs grow with the fleet: 100, 500, 1,000 and 2,000 collectors.

Run: ``.venv/bin/python bench/scaling.py [--sizes 100,500,1000,2000] [--rounds 1]`` (about 4
minutes); ``--quick`` for a smoke test (10 and 20 collectors, short windows, ~10 s). For each
size, ``reconciler run`` starts on N spec files (``/bin/sleep 3600.NNNN``, ``log = "null"``) in
a temp dir, and (``compare/rows.py``, ``measure_large``, the same code as the comparison):

- cold start: the daemon spawned -> all N collectors exec'd (kernel process events), and the
  daemon's CPU by then;
- idle: the daemon's own CPU over ``--idle-seconds`` (ticks and schedstat ns), wake-ups per
  second, RSS and USS, threads;
- /metrics: ``--scrapes`` GETs as Prometheus sends them (keep-alive, gzip): p50 and p99, CPU
  per scrape, and so the CPU at one scrape every 15 s (idle + CPU per scrape / 15 s).

Prints a Markdown table, one line a size, then the cost of each further 100 collectors (least
squares over the sizes); writes it to ``bench/compare/SCALING.md`` unless ``--no-write``;
``--json`` for the values. Every process is stopped and reaped, also on failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path

from compare.observe import open_observer
from compare.rows import QUICK, Figures, Settings, measure_large
from compare.session import BenchError, become_subreaper, raise_open_files_limit, reap_orphans
from compare.tools import Reconciler
from figures import percentile

HERE = Path(__file__).resolve().parent
RESULTS_PATH = HERE / "compare" / "SCALING.md"
MARK_ENV = "RECONCILER_TEST_SESSION"
TOOL = "reconciler"
# (header, metric prefix, how to summarise: median of rounds or a percentile of all samples, digits)
COLUMNS = (
    ("cold start, s", "cold", "median", 2),
    ("CPU by then, s", "cold_cpu", "median", 2),
    ("idle CPU, % (ticks)", "idle_cpu", "median", 3),
    ("idle CPU, % (schedstat)", "idle_cpu_ns", "median", 3),
    ("wake-ups / s", "idle_wakeups", "median", 1),
    ("RSS, MiB", "rss", "median", 1),
    ("USS, MiB", "uss", "median", 1),
    ("threads", "threads", "median", 0),
    ("scrape p50, ms", "scrape_ms", "p50", 1),
    ("scrape p99, ms", "scrape_ms", "p99", 1),
    ("CPU / scrape, ms", "scrape_cpu_ms", "median", 1),
    ("CPU at 1 scrape / 15 s, %", "scrape_cpu_15s", "median", 3),
)


def summary(values: list[float], how: str) -> float:
    if how == "p50":
        return percentile(values, 0.5)
    if how == "p99":
        return percentile(values, 0.99)
    return statistics.median(values)


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of value against size, per collector."""
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else None


def table(figures: Figures, sizes: list[int]) -> tuple[str, dict[str, dict[str, float]]]:
    header = ["collectors", *(name for name, *_ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    found: dict[str, dict[str, float]] = {}
    points: dict[str, list[tuple[int, float]]] = {name: [] for name, *_ in COLUMNS}
    for size in sizes:
        cells, found[str(size)] = [str(size)], {}
        for name, prefix, how, digits in COLUMNS:
            values = figures.get(TOOL, f"{prefix}_{size}")
            if not values:
                cells.append("failed" if figures.errors[TOOL].get(str(size)) else "-")
                continue
            value = summary(values, how)
            found[str(size)][name] = value
            points[name].append((size, value))
            cells.append(f"{value:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    growth = ["per +100 collectors"]
    for name, _, _, digits in COLUMNS:
        per_collector = slope(points[name])
        growth.append("-" if per_collector is None else f"{per_collector * 100:+.{digits + 1}f}")
    lines.append("| " + " | ".join(growth) + " |")
    return "\n".join(lines), found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="default 100,500,1000,2000; quick 10,20")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows")
    parser.add_argument("--idle-seconds", type=float, default=None, help="default 30, quick 0.5")
    parser.add_argument("--scrapes", type=int, default=None, help="default 100, quick 5")
    parser.add_argument("--json", type=Path, help="also write the values as JSON here")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS_PATH}")
    args = parser.parse_args()
    default_sizes = "10,20" if args.quick else "100,500,1000,2000"
    args.sizes = [int(size) for size in (args.sizes or default_sizes).split(",")]
    return args


def main() -> None:
    args = parse_args()
    base = Settings(**QUICK) if args.quick else Settings(large_idle_seconds=30.0, scrapes=100)
    settings = dataclasses.replace(
        base,
        large_idle_seconds=args.idle_seconds or base.large_idle_seconds,
        scrapes=args.scrapes or base.scrapes,
        env=((MARK_ENV, os.environ[MARK_ENV]),) if MARK_ENV in os.environ else (),
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise_open_files_limit()
    become_subreaper()
    tool = Reconciler(Path(sys.executable).with_name("reconciler"))
    observer = open_observer(polling=False)
    figures = Figures()
    started = time.monotonic()
    try:
        for round_index in range(args.rounds):
            for size in args.sizes:
                load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
                print(f"round {round_index + 1}: {size} collectors (load {load})", file=sys.stderr)
                figures.loads.append(f"{size} collectors, round {round_index + 1}: {load}")
                try:
                    measure_large(tool, observer=observer, figures=figures, settings=settings,
                                  count=size)
                except (BenchError, OSError) as exc:
                    figures.errors[TOOL][str(size)] = f"{type(exc).__name__}: {exc}"
                    print(f"  {size}: FAILED: {exc}", file=sys.stderr)
    finally:
        observer.close()
        reap_orphans()
    text, found = table(figures, args.sizes)
    notes = [
        f"- wall time {time.monotonic() - started:.0f} s; observed with {observer.name}",
        *(f"- load average at the start of {load}" for load in figures.loads),
        *(f"- {size}: {error}" for size, error in figures.errors[TOOL].items()),
    ]
    print(text)
    print("\n".join(["", *notes]))
    if args.json:
        args.json.write_text(json.dumps({"sizes": found, "errors": figures.errors[TOOL]},
                                        indent=2))
    if not args.no_write:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = shlex.join([".venv/bin/python", "bench/scaling.py", *sys.argv[1:]])
        RESULTS_PATH.write_text("\n".join([
            "# reconciler: how each cost grows with the fleet",
            "",
            f"- date: {now}; Python {platform.python_version()}; Linux {platform.release()}; "
            f"nproc {len(os.sched_getaffinity(0))}",
            f"- command: `{command}`",
            f"- idle window {settings.large_idle_seconds:g} s, {settings.scrapes} scrapes a size, "
            f"{args.rounds} round(s); method: `bench/scaling.py` docstring",
            "",
            text,
            "",
            *notes,
            "",
        ]))
        print(f"\nwritten to {RESULTS_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
