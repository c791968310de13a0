"""Benchmark of the process manager: 500 sleepers, idle cost, crash-to-restart latency.

Run: ``make bench`` or ``.venv/bin/python bench/manager_bench.py [--collectors N]``.
Reports seconds until all collectors run, the manager's threads and RSS, its
CPU over an idle window, and crash-to-restart latency (SIGKILL to the new
process spawned and reported) for the first restart of a series. Not a test:
figures go in the closing notes of issues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import threading
import time

import psutil
from figures import percentile

from reconciler import CollectorConfig, CollectorProcessManager, ManagerEvent, ProcessManagerConfig


async def run(collectors: int, idle_seconds: float, crashes: int) -> None:
    me = psutil.Process()
    manager = CollectorProcessManager(ProcessManagerConfig(default_graceful_timeout_seconds=5))
    started_at: dict[int, float] = {}
    restarted: dict[str, asyncio.Future[float]] = {}

    def on_event(event: ManagerEvent) -> None:
        future = restarted.get(event.collector_id)
        if event.kind == "started" and future is not None and not future.done():
            future.set_result(time.perf_counter())

    manager.add_listener(on_event)
    config = CollectorConfig(binary_path="/bin/sleep", args=("3600",), log="null")
    threads_before = threading.active_count()
    try:
        t0 = time.perf_counter()
        # Concurrently, as the reconcile loop starts independent collectors.
        pids = await asyncio.gather(
            *(manager.start_collector(f"c{i:04d}", "sleep", config) for i in range(collectors))
        )
        startup = time.perf_counter() - t0
        assert all(psutil.pid_exists(pid) for pid in pids)
        threads_running = me.num_threads()

        cpu_before = me.cpu_times()
        wall_before = time.perf_counter()
        await asyncio.sleep(idle_seconds)
        cpu_after = me.cpu_times()
        idle_cpu = (
            (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
            / (time.perf_counter() - wall_before)
            * 100
        )

        latencies = []
        loop = asyncio.get_running_loop()
        for i in range(crashes):
            collector_id = f"c{i:04d}"
            status = manager.status(collector_id)
            assert status.pid is not None
            restarted[collector_id] = loop.create_future()
            killed = time.perf_counter()
            os.kill(status.pid, signal.SIGKILL)
            restarted_at = await asyncio.wait_for(restarted[collector_id], 10)
            latencies.append((restarted_at - killed) * 1000)
            started_at[i] = restarted_at
        rss_mib = me.memory_info().rss / 2**20
        threads_after = me.num_threads()
    finally:
        t1 = time.perf_counter()
        await manager.shutdown_all()
        shutdown = time.perf_counter() - t1

    print(f"collectors:                    {collectors}")
    print(f"seconds to all running:        {startup:.2f}")
    print(f"shutdown_all seconds:          {shutdown:.2f}")
    print(
        f"manager threads:               {threads_before} before, {threads_running} running, "
        f"{threads_after} after crashes"
    )
    print(f"manager RSS (MiB):             {rss_mib:.1f}")
    print(f"manager CPU idle ({idle_seconds:.0f} s), % core: {idle_cpu:.2f}")
    print(
        f"crash-to-restart ms ({crashes}):    median {statistics.median(latencies):.2f}, "
        f"p99 {percentile(latencies, 0.99):.2f}, max {max(latencies):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--crashes", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.collectors, args.idle_seconds, args.crashes))


if __name__ == "__main__":
    main()
