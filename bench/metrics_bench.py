"""Benchmark of the metrics exporter: /metrics with 1000 collectors, and what scrapes cost.

Run: ``.venv/bin/python bench/metrics_bench.py [--collectors N] [--scrapes N] [--no-cgroups]``.
Writes N spec files (``/bin/sleep 3600``, ``log = "null"``) to a temporary
specs directory, runs a real ``Reconciler`` and ``MetricsServer`` on them, and
once every collector runs reports:

- the time of one ``GET /metrics`` over HTTP (median, p99), as a scraper in
  another process sees it (keep-alive, ``Accept-Encoding: gzip`` as
  Prometheus sends), and the part of it spent in the event loop;
- where that time goes (views, process trees, families, encoding) and what
  ``generate_latest`` would take instead of ``encode_text``;
- the reconciler process's CPU while idle and under one scrape a second.

Not a test: figures go in the closing notes of issues. Every collector is
stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from figures import percentile
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from reconciler import CollectorProcessManager, CollectorState, ProcessManagerConfig
from reconciler.loop import Reconciler
from reconciler.metrics import MetricsServer, SeriesFamily
from reconciler.source import SpecSource

SPEC = """\
type = "sleeper"
binary_path = "/bin/sleep"
args = ["3600"]
log = "null"
graceful_timeout_seconds = 5
"""

# The scraper runs in a process of its own, so that its CPU (reading and
# unzipping ~2 MB a scrape) is not counted as the reconciler's.
SCRAPER = """\
import http.client, json, sys, time
host, port, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
connection = http.client.HTTPConnection(host, port, timeout=30)
durations, size = [], 0
next_at = time.monotonic()
for _ in range(count):
    started = time.perf_counter()
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    body = response.read()
    durations.append(time.perf_counter() - started)
    assert response.status == 200, response.status
    size = len(body)
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
print(json.dumps({"durations": durations, "bytes": size}))
"""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def _scrape(host: str, port: int, *, count: int, interval_seconds: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRAPER,
        host,
        str(port),
        str(count),
        str(interval_seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"scraper exited with {process.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def _cpu_seconds(me: psutil.Process) -> float:
    times = me.cpu_times()
    return times.user + times.system


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _breakdown(server: MetricsServer, rounds: int = 5) -> dict[str, float]:
    """Median time of each step of a scrape, called directly in the loop thread."""
    reconciler, steps = server.reconciler, {}
    timings: dict[str, list[float]] = {
        "views()": [],
        "all_tree_pids()": [],
        "collect() (all of the above + /proc)": [],
        "text of the families (served)": [],
        "generate_latest of the same (not used)": [],
    }
    for _ in range(rounds):
        t0 = time.perf_counter()
        reconciler.views()
        t1 = time.perf_counter()
        reconciler.manager.all_tree_pids()
        t2 = time.perf_counter()
        families = list(server.registry.collect())
        t3 = time.perf_counter()
        "".join(f.text() for f in families if isinstance(f, SeriesFamily))
        t4 = time.perf_counter()
        generate_latest(_Collected(families))
        t5 = time.perf_counter()
        for name, seconds in zip(
            timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
        ):
            timings[name].append(seconds)
    for name, values in timings.items():
        steps[name] = statistics.median(values)
    return steps


async def run(
    *, collectors: int, scrapes: int, load_seconds: int, idle_seconds: float, cgroups: bool
) -> None:
    me = psutil.Process()
    workdir = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    specs = workdir / "specs"
    specs.mkdir()
    for index in range(collectors):
        (specs / f"c{index:04d}.toml").write_text(SPEC)
    manager = CollectorProcessManager(
        ProcessManagerConfig(default_graceful_timeout_seconds=5),
        log_dir=workdir / "logs",
        cgroups=cgroups,
    )
    reconciler = Reconciler(source=SpecSource(specs), manager=manager)
    server = MetricsServer(reconciler, address="127.0.0.1:0")
    in_loop: list[float] = []
    scrape = server.scrape

    def timed_scrape() -> bytes:
        body = scrape()
        in_loop.append(server.last_scrape_seconds)
        return body

    server.scrape = timed_scrape  # type: ignore[method-assign]
    task = asyncio.create_task(reconciler.run(), name="reconcile loop")
    try:
        host, port = await server.start()
        t0 = time.perf_counter()
        deadline = t0 + 90
        while True:
            running = sum(
                1
                for cid in manager.collector_ids()
                if manager.status(cid).state == CollectorState.RUNNING
            )
            if running == collectors:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {running}/{collectors} running after 90 s")
            await asyncio.sleep(0.1)
        tracking = "cgroup per run" if manager.cgroup_tracking else "process groups"
        print(
            f"{collectors} collectors running after {time.perf_counter() - t0:.1f} s"
            f" (tracking: {tracking})"
        )
        await asyncio.sleep(1)  # let the last passes and exits settle

        for name, seconds in _breakdown(server).items():
            print(f"  {name:40s} {_ms(seconds)}")

        await _scrape(host, port, count=5, interval_seconds=0)  # warm up
        in_loop.clear()
        result = await _scrape(host, port, count=scrapes, interval_seconds=0)
        durations = result["durations"]
        print(
            f"GET /metrics x{scrapes} back to back ({result['bytes'] / 1e3:.0f} kB gzipped): "
            f"median {_ms(statistics.median(durations))}, p99 {_ms(percentile(durations, 0.99))}"
            f"; in the event loop: median {_ms(statistics.median(in_loop))}, "
            f"p99 {_ms(percentile(in_loop, 0.99))}"
        )

        cpu0, wall0 = _cpu_seconds(me), time.perf_counter()
        await asyncio.sleep(idle_seconds)
        idle = (_cpu_seconds(me) - cpu0) / (time.perf_counter() - wall0)
        in_loop.clear()
        cpu0, wall0 = _cpu_seconds(me), time.perf_counter()
        await _scrape(host, port, count=load_seconds, interval_seconds=1.0)
        loaded = (_cpu_seconds(me) - cpu0) / (time.perf_counter() - wall0)
        print(
            f"reconciler CPU: idle {idle * 100:.1f} % over {idle_seconds:.0f} s; "
            f"one scrape a second {loaded * 100:.1f} % over {load_seconds} s "
            f"(in-loop scrape median {_ms(statistics.median(in_loop))})"
        )
    finally:
        await reconciler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        t0 = time.perf_counter()
        await manager.shutdown_all()
        print(f"shutdown of {collectors} collectors: {time.perf_counter() - t0:.1f} s")
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--load-seconds", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-cgroups", action="store_true", help="track trees by process group (the fallback)"
    )
    args = parser.parse_args()
    asyncio.run(
        run(
            collectors=args.collectors,
            scrapes=args.scrapes,
            load_seconds=args.load_seconds,
            idle_seconds=args.idle_seconds,
            cgroups=not args.no_cgroups,
        )
    )


if __name__ == "__main__":
    main()
