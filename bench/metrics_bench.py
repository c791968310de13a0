"""Benchmark of the metrics exporter: /metrics with 1000 collectors, and what scrapes cost.

Run: ``.venv/bin/python bench/metrics_bench.py [--collectors N] [--scrapes N] [--no-cgroups]
[--gc-off] [--no-young-collection]``.
Writes N spec files (``/bin/sleep 3600``, ``log = "null"``) to a temporary
specs directory, runs a real ``Reconciler`` and ``MetricsServer`` on them, and
once every collector runs reports:

- where a scrape's time goes (the exporter's views, process trees, rows and blocks, text,
  plain and gzip bodies) and what ``generate_latest`` would take instead;
- the time of one ``GET /metrics`` over HTTP (median, p99), as a scraper in
  another process sees it (keep-alive, ``Accept-Encoding: gzip`` as
  Prometheus sends), the part of it spent in the event loop, and the garbage
  collections that ran during those scrapes;
- the reconciler process's CPU per scrape (over the back-to-back scrapes, less
  idle, as ``bench/compare`` counts it), hence at one scrape every 15 s, and
  its CPU while idle and under one scrape a second.

``--gc-off`` disables the garbage collector during each scrape, as the
exporter once did (a process-wide side effect it no longer has), to measure
what that changes. Not a test: figures go in the closing notes of issues.
Every collector is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
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
from reconciler.metrics import MetricsServer, TextFamily
from reconciler.metrics.exposition import Exposition
from reconciler.source import SpecSource

SCRAPE_INTERVAL_SECONDS = 15.0
"""Prometheus's default: the "CPU at one scrape every 15 s" figure."""

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
    reconciler, collector = server.reconciler, server.collector
    timings: dict[str, list[float]] = {
        "exported() (the views a scrape reads)": [],
        "process trees (cgroup.procs, /proc)": [],
        "collect() (all of the above + blocks)": [],
        "family texts": [],
        "plain body": [],
        "gzip body": [],
        "generate_latest of the same (not used)": [],
        "views() (the API's; not used)": [],
    }
    plain, gzipped = Exposition(), Exposition()
    for _ in range(rounds):
        t0 = time.perf_counter()
        reconciler.exported()
        t1 = time.perf_counter()
        collector.trees.read(reconciler.manager)
        t2 = time.perf_counter()
        families = list(server.registry.collect())
        t3 = time.perf_counter()
        texts = [f.text() for f in families if isinstance(f, TextFamily)]
        t4 = time.perf_counter()
        plain.plain(texts)
        t5 = time.perf_counter()
        gzipped.gzip(texts)
        t6 = time.perf_counter()
        generate_latest(_Collected(families))
        t7 = time.perf_counter()
        reconciler.views()
        t8 = time.perf_counter()
        steps = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7)
        for name, seconds in zip(timings, steps, strict=True):
            timings[name].append(seconds)
    print(
        f"  (at the last collect: blocks rewritten {collector.blocks.rewritten}, families "
        f"joined {collector.blocks.rejoined}, texts re-encoded "
        f"{len(texts) - gzipped.reused}/{len(texts)}; files kept open {len(collector.trees.files)})"
    )
    return {name: statistics.median(values) for name, values in timings.items()}


class _Collections:
    """Garbage collections while counting, by generation: how many, and their time."""

    def __init__(self) -> None:
        self.counting = False
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.counting:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started

    def reset(self) -> None:
        self.count, self.seconds = [0, 0, 0], [0.0, 0.0, 0.0]

    def summary(self) -> str:
        pairs = enumerate(zip(self.count, self.seconds, strict=True))
        return ", ".join(f"gen{g} {n} ({_ms(t)})" for g, (n, t) in pairs)


async def run(
    *,
    collectors: int,
    scrapes: int,
    load_seconds: int,
    idle_seconds: float,
    cgroups: bool,
    gc_off: bool,
    young_collection: bool,
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
    server.collect_young_first = young_collection
    in_loop: list[float] = []
    gc_in_scrape: list[float] = []
    """The garbage collections' time inside each scrape of ``in_loop``."""
    scrape = server.scrape
    collections = _Collections()

    def timed_scrape(*, gzip: bool = False) -> bytes:
        if gc_off:
            gc.disable()
        gc_before = sum(collections.seconds)
        try:
            body = scrape(gzip=gzip)
        finally:
            if gc_off:
                gc.enable()
        in_loop.append(server.last_scrape_seconds)
        gc_in_scrape.append(sum(collections.seconds) - gc_before)
        return body

    server.scrape = timed_scrape  # type: ignore[method-assign]
    gc.callbacks.append(collections)
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
            f" (tracking: {tracking}; garbage collector off during scrapes: {gc_off}; "
            f"young generations collected first: {young_collection})"
        )
        await asyncio.sleep(1)  # let the last passes and exits settle

        for name, seconds in _breakdown(server).items():
            print(f"  {name:40s} {_ms(seconds)}")
        # What is served is what the plain body says, gzip or not.
        zipped, plain = server.scrape(gzip=True), server.scrape()
        assert gzip.decompress(zipped).count(b"\n") == plain.count(b"\n"), "gzip body"

        await _scrape(host, port, count=5, interval_seconds=0)  # warm up
        cpu0, wall0 = _cpu_seconds(me), time.perf_counter()
        await asyncio.sleep(idle_seconds)
        idle = (_cpu_seconds(me) - cpu0) / (time.perf_counter() - wall0)

        in_loop.clear()
        gc_in_scrape.clear()
        collections.reset()
        collections.counting = True
        cpu0, wall0 = _cpu_seconds(me), time.perf_counter()
        result = await _scrape(host, port, count=scrapes, interval_seconds=0)
        cpu, wall = _cpu_seconds(me) - cpu0, time.perf_counter() - wall0
        collections.counting = False
        durations = result["durations"]
        per_scrape = max(0.0, cpu - idle * wall) / scrapes
        print(
            f"GET /metrics x{scrapes} back to back ({result['bytes'] / 1e3:.0f} kB gzipped): "
            f"median {_ms(statistics.median(durations))}, p99 {_ms(percentile(durations, 0.99))}"
            f"; in the event loop: median {_ms(statistics.median(in_loop))}, "
            f"p99 {_ms(percentile(in_loop, 0.99))}"
        )
        print(f"  garbage collections meanwhile: {collections.summary()}")
        slowest = sorted(zip(in_loop, gc_in_scrape, strict=True), reverse=True)[:5]
        print(
            "  slowest in the event loop (of which garbage collection): "
            + ", ".join(f"{_ms(total)} ({_ms(collecting)})" for total, collecting in slowest)
        )
        print(
            f"reconciler CPU per scrape {_ms(per_scrape)}; idle {idle * 100:.2f} % over "
            f"{idle_seconds:.0f} s; at one scrape every {SCRAPE_INTERVAL_SECONDS:.0f} s: "
            f"{idle * 100 + per_scrape / SCRAPE_INTERVAL_SECONDS * 100:.3f} %"
        )
        if load_seconds > 0:
            in_loop.clear()
            cpu0, wall0 = _cpu_seconds(me), time.perf_counter()
            await _scrape(host, port, count=load_seconds, interval_seconds=1.0)
            loaded = (_cpu_seconds(me) - cpu0) / (time.perf_counter() - wall0)
            print(
                f"reconciler CPU at one scrape a second: {loaded * 100:.1f} % over "
                f"{load_seconds} s (in-loop scrape median {_ms(statistics.median(in_loop))})"
            )
    finally:
        gc.callbacks.remove(collections)
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
    parser.add_argument(
        "--gc-off", action="store_true", help="disable the garbage collector during each scrape"
    )
    parser.add_argument(
        "--no-young-collection",
        action="store_true",
        help="do not collect the young generations before each scrape",
    )
    args = parser.parse_args()
    asyncio.run(
        run(
            collectors=args.collectors,
            scrapes=args.scrapes,
            load_seconds=args.load_seconds,
            idle_seconds=args.idle_seconds,
            cgroups=not args.no_cgroups,
            gc_off=args.gc_off,
            young_collection=not args.no_young_collection,
        )
    )


if __name__ == "__main__":
    main()
