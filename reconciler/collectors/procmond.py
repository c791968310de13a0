"""procmond: the process table, sampled: how many processes, in which state, and the top ones.

An example collector (console script ``reconciler-procmond``, run by
``specs/procmond.toml``), in the spirit of DaemonEye's procmond. Each line::

    {"ts": "...", "collector": "procmond", "host": "...", "elapsed_seconds": 5.0,
     "processes": 212, "threads": 640, "by_state": {"sleeping": 205, "running": 2, ...},
     "top_cpu": [{"pid": 1, "name": "...", "user": "...", "cpu_percent": 12.5,
                  "rss_bytes": 123}, ...],
     "top_rss": [...]}

``cpu_percent`` is of one CPU, as ``top`` shows it (a process busy on two
cores is at 200), averaged over ``elapsed_seconds``, the time since the
previous sample. A process first seen in this window shows 0.0. Processes the
collector may not inspect (another user's, without root) still count, with
``null`` for what was denied.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import psutil

from reconciler.collectors.runner import Collector, Record, non_negative_int, run

ATTRS = ["pid", "name", "username", "status", "cpu_percent", "memory_info", "num_threads"]


class ProcessSampler:
    """Keeps psutil's per-process CPU baselines between samples."""

    def __init__(self, *, top: int) -> None:
        self.top = top
        # cpu_percent(interval=None) measures since the previous call on the same
        # Process object; process_iter keeps those objects between calls, so this
        # first pass is the baseline of the first sample.
        for process in psutil.process_iter():
            try:
                process.cpu_percent(interval=None)
            except psutil.Error:
                pass
        self.last_sample_seconds = time.monotonic()

    def sample(self) -> Record:
        now_seconds = time.monotonic()
        rows: list[dict[str, Any]] = []
        by_state: Counter[str] = Counter()
        threads = 0
        for process in psutil.process_iter(ATTRS, ad_value=None):
            info = process.info
            by_state[info["status"] or "unknown"] += 1
            threads += info["num_threads"] or 0
            memory = info["memory_info"]
            rows.append(
                {
                    "pid": info["pid"],
                    "name": info["name"],
                    "user": info["username"],
                    "cpu_percent": round(info["cpu_percent"] or 0.0, 1),
                    "rss_bytes": memory.rss if memory is not None else None,
                }
            )
        elapsed_seconds = now_seconds - self.last_sample_seconds
        self.last_sample_seconds = now_seconds
        return {
            "elapsed_seconds": round(elapsed_seconds, 3),
            "processes": len(rows),
            "threads": threads,
            "by_state": dict(by_state.most_common()),
            "top_cpu": sorted(rows, key=_by_cpu)[: self.top],
            "top_rss": sorted(rows, key=_by_rss)[: self.top],
        }


def _by_cpu(row: dict[str, Any]) -> tuple[float, int]:
    return -row["cpu_percent"], -(row["rss_bytes"] or 0)


def _by_rss(row: dict[str, Any]) -> int:
    return -(row["rss_bytes"] or 0)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--top",
        type=non_negative_int,
        default=5,
        metavar="N",
        help="how many processes to list by CPU and by memory (default: %(default)s)",
    )


def _create_sampler(options: argparse.Namespace) -> ProcessSampler:
    return ProcessSampler(top=options.top)


COLLECTOR = Collector(
    name="procmond",
    description=__doc__ or "",
    create_sampler=_create_sampler,
    add_arguments=_add_arguments,
)


def main(argv: list[str] | None = None) -> int:
    """Console script ``reconciler-procmond``."""
    return run(COLLECTOR, argv)


if __name__ == "__main__":
    raise SystemExit(main())
