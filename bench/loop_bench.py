"""Benchmark of the control plane: apply latency, cold start of 1000, idle CPU.

Run: ``.venv/bin/python bench/loop_bench.py [--collectors 1000] [--edits 50]``.

- apply latency: from the write of a changed spec file (write-temp-then-rename)
  to the new process running, over ``--edits`` edits of one collector, 0.5 s
  apart (closer edits are coalesced by design, so they measure that instead);
- cold start: ``--collectors`` spec files already in the directory when the
  loop starts, until every one of them runs;
- idle CPU of the whole reconciler process with all of them running.
Not a test: the figures go in the closing notes of issues.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from figures import percentile

from reconciler import CollectorProcessManager, CollectorState, ManagerEvent, ProcessManagerConfig
from reconciler.loop import Reconciler
from reconciler.source import SpecSource

EDIT_SPACING_SECONDS = 0.5


def spec_text(arg: str) -> str:
    return (
        'type = "sleeper"\nbinary_path = "/bin/sleep"\n'
        f'args = ["{arg}"]\nlog = "null"\ngraceful_timeout_seconds = 5\n'
    )


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.rename(temporary, path)


async def apply_latency(specs: Path, edits: int) -> list[float]:
    manager = CollectorProcessManager(ProcessManagerConfig())
    reconciler = Reconciler(source=SpecSource(specs), manager=manager)
    started: asyncio.Queue[float] = asyncio.Queue()

    def on_event(event: ManagerEvent) -> None:
        if event.kind == "started":
            started.put_nowait(time.perf_counter())

    manager.add_listener(on_event)
    path = specs / "edited.toml"
    write_atomically(path, spec_text("3600"))
    task = asyncio.create_task(reconciler.run())
    latencies = []
    try:
        await asyncio.wait_for(started.get(), 10)
        for i in range(edits):
            # Edits as an operator or a deploy makes them: apart, not a burst
            # (bursts are coalesced on purpose; tests/integration/test_loop.py).
            await asyncio.sleep(EDIT_SPACING_SECONDS)
            written = time.perf_counter()
            write_atomically(path, spec_text(str(4000 + i)))
            running = await asyncio.wait_for(started.get(), 10)
            latencies.append((running - written) * 1000)
    finally:
        await reconciler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await manager.shutdown_all()
    path.unlink()
    return latencies


async def cold_start_and_idle(specs: Path, collectors: int, idle_seconds: float) -> None:
    for i in range(collectors):
        (specs / f"c{i:04d}.toml").write_text(spec_text("3600"))
    me = psutil.Process()
    manager = CollectorProcessManager(ProcessManagerConfig())
    reconciler = Reconciler(source=SpecSource(specs), manager=manager)
    running: set[str] = set()
    all_running = asyncio.Event()

    def on_event(event: ManagerEvent) -> None:
        if event.kind == "started":
            running.add(event.collector_id)
            if len(running) == collectors:
                all_running.set()

    manager.add_listener(on_event)
    t0 = time.perf_counter()
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.wait_for(all_running.wait(), 120)
        cold = time.perf_counter() - t0
        assert all(manager.state_of(cid) == CollectorState.RUNNING for cid in running)
        passes = reconciler.passes
        await asyncio.sleep(1.0)  # let the last wake-ups settle before measuring idle
        cpu_before, wall_before = me.cpu_times(), time.perf_counter()
        passes_before = reconciler.passes
        await asyncio.sleep(idle_seconds)
        cpu_after = me.cpu_times()
        wall = time.perf_counter() - wall_before
        idle = (
            (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall * 100
        )
        print(f"cold start, {collectors} spec files to all running: {cold:.2f} s ({passes} passes)")
        print(
            f"idle CPU with {collectors} collectors over {idle_seconds:.0f} s: {idle:.2f} % of a "
            f"core ({reconciler.passes - passes_before} passes), RSS "
            f"{me.memory_info().rss / 2**20:.0f} MiB, threads {me.num_threads()}"
        )
    finally:
        await reconciler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        t1 = time.perf_counter()
        await manager.shutdown_all()
        print(f"shutdown of {collectors}: {time.perf_counter() - t1:.2f} s")


async def main(collectors: int, edits: int, idle_seconds: float) -> None:
    specs = Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    try:
        latencies = await apply_latency(specs, edits)
        print(
            f"apply latency over {edits} edits (write to new process running): "
            f"median {statistics.median(latencies):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
        )
        await cold_start_and_idle(specs, collectors, idle_seconds)
    finally:
        shutil.rmtree(specs, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.collectors, args.edits, args.idle_seconds))
