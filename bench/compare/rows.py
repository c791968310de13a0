"""The measurements behind each row of the comparison, one supervisor session each.

Used by ``bench/compare_bench.py`` (all three tools) and ``bench/scaling.py`` (the reconciler).
Each function starts one tool on one workload (``session.supervising``), measures, and adds
its values to ``Figures`` under a metric key; ``compare.report`` turns those into rows.

- ``measure_cold``: daemon spawned -> all N programs exec'd (kernel exec time), and the CPU the
  daemon spent by then.
- ``measure_fleet``: the same for the fleet, then an idle window (CPU by ticks and by
  schedstat, wake-ups), RSS/USS, threads, fds, a no-op control command timed K times, and
  SIGKILLs of K programs, each timed to its replacement's exec.
- ``measure_large``: a large fleet: cold start and RSS; for the reconciler the /metrics scrape
  (latency, CPU per scrape, idle CPU, hence CPU at one scrape every 15 s).
- ``measure_storm``: programs that exit after 0.1 s, restarted as each tool's policy says: the
  daemon's CPU over the window, restarts (execs) seen, CPU per restart.
- ``measure_apply``: a running fleet; one new program added K times (file written -> exec).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field

from compare.observe import Observer
from compare.procstat import CLOCK_TICKS_PER_SECOND, memory_mib, sample, usage
from compare.session import (
    BenchError,
    metrics_address,
    supervising,
    timed_command,
    wait_running,
)
from compare.tools import Policy, Program, Reconciler, Tool

CRASH_TIMEOUT_SECONDS = 15.0
SCRAPE_INTERVAL_SECONDS = 15.0
"""Prometheus's default scrape interval: the "CPU at one scrape / 15 s" row."""


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of every measurement (``--quick`` shrinks them all)."""

    small: int = 50
    fleet: int = 200
    large: int = 1000
    idle_seconds: float = 30.0
    settle_seconds: float = 2.0
    """After the start-up burst: supervisord's STARTING -> RUNNING (1 s), the reconciler's
    state file; then the idle window opens."""
    ctl_runs: int = 20
    kills: int = 25
    kill_pause_seconds: float = 1.0
    """Random pause (0 to this) between kills, so a periodic checker (circus) is met at a
    random phase."""
    storm_programs: int = 20
    storm_seconds: float = 20.0
    apply_programs: int = 50
    applies: int = 10
    apply_pause_seconds: float = 1.0
    scrapes: int = 200
    large_idle_seconds: float = 10.0
    env: tuple[tuple[str, str], ...] = ()

    @property
    def policy(self) -> Policy:
        return Policy(graceful_timeout_seconds=10, group_signals=True, env=self.env)


QUICK = {
    "small": 5,
    "fleet": 10,
    "large": 20,
    "idle_seconds": 1.0,
    "settle_seconds": 0.3,
    "ctl_runs": 2,
    "kills": 2,
    "kill_pause_seconds": 0.1,
    "storm_programs": 3,
    "storm_seconds": 1.5,
    "apply_programs": 5,
    "applies": 2,
    "apply_pause_seconds": 0.2,
    "scrapes": 5,
    "large_idle_seconds": 0.5,
}


@dataclass
class Figures:
    """Every value measured, per tool and metric, over all rounds."""

    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    errors: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    loads: list[str] = field(default_factory=list)

    def add(self, tool: str, metric: str, *values: float) -> None:
        self.values[tool][metric].extend(values)

    def get(self, tool: str, metric: str) -> list[float]:
        return self.values[tool].get(metric, [])


def sleepers(count: int, prefix: str = "c") -> list[Program]:
    # A unique argv per program (the fraction), which is how the observer tells them apart.
    return [Program(f"{prefix}{i:04d}", ("/bin/sleep", f"3600.{i:04d}")) for i in range(count)]


def start_timeout(count: int) -> float:
    return max(120.0, count * 0.5)


def measure_cold(tool: Tool, *, observer: Observer, figures: Figures, settings: Settings,
                 count: int) -> None:
    """Daemon spawned -> every one of ``count`` programs exec'd."""
    programs = sleepers(count)
    with supervising(tool, programs, settings.policy, observer) as supervised:
        running_ns = wait_running(observer, {p.argv for p in programs}, start_timeout(count))
        cpu = sample(supervised.pid)  # every tick since its spawn: the CPU start-up cost
        figures.add(tool.name, f"cold_{count}", (running_ns - supervised.started_ns) / 1e9)
        figures.add(tool.name, f"cold_cpu_{count}", cpu.ticks / CLOCK_TICKS_PER_SECOND)
        # circusd sent SIGTERM while still starting its watchers may ignore it (then it is
        # killed after a minute): let every tool finish starting before the session ends.
        time.sleep(settings.settle_seconds)


def measure_fleet(tool: Tool, *, observer: Observer, figures: Figures, settings: Settings,
                  rng: random.Random, round_index: int) -> None:
    """Cold start, idle cost, memory, threads, control command, crash -> replacement."""
    count = settings.fleet
    programs = sleepers(count)
    with supervising(tool, programs, settings.policy, observer) as supervised:
        pid = supervised.pid
        running_ns = wait_running(observer, {p.argv for p in programs}, start_timeout(count))
        figures.add(tool.name, f"cold_{count}", (running_ns - supervised.started_ns) / 1e9)
        figures.add(tool.name, f"cold_cpu_{count}", sample(pid).ticks / CLOCK_TICKS_PER_SECOND)

        time.sleep(settings.settle_seconds)
        before = sample(pid)
        time.sleep(settings.idle_seconds)
        idle = usage(before, sample(pid))
        figures.add(tool.name, "idle_cpu", idle.ticks_percent)
        figures.add(tool.name, "idle_cpu_ns", idle.schedstat_percent)
        figures.add(tool.name, "idle_wakeups", idle.wakeups_per_second)
        rss, uss = memory_mib(pid)
        figures.add(tool.name, "rss", rss)
        figures.add(tool.name, "uss", uss)
        figures.add(tool.name, "threads", sample(pid).threads)
        figures.add(tool.name, "fds", len(os.listdir(f"/proc/{pid}/fd")))

        command = tool.control_command(supervised.workdir)
        timed_command(command)  # warm-up: page cache, the daemon's first answer
        for _ in range(settings.ctl_runs):
            figures.add(tool.name, "ctl_ms", timed_command(command) * 1000)

        # Spread the kills over the fleet, and over different programs in each round.
        kills = min(settings.kills, count)
        for k in range(kills):
            program = programs[(k * count // kills + round_index) % count]
            figures.add(tool.name, "crash_ms", kill_and_wait(observer, program))
            time.sleep(rng.uniform(0.0, settings.kill_pause_seconds))
    if supervised.shutdown_seconds is not None:
        figures.add(tool.name, "shutdown", supervised.shutdown_seconds)


def kill_and_wait(observer: Observer, program: Program) -> float:
    """SIGKILL the program; ms until its replacement has exec'd (kernel timestamps)."""
    pid = observer.pid_of(program.argv)
    if pid is None:
        raise BenchError(f"{program.name} is not running before its kill")
    killed_ns = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    replaced_ns = observer.wait_replaced(
        program.argv, pid, time.monotonic() + CRASH_TIMEOUT_SECONDS
    )
    if replaced_ns is None:
        raise BenchError(f"{program.name} not restarted in {CRASH_TIMEOUT_SECONDS} s")
    return (replaced_ns - killed_ns) / 1e6


def measure_large(tool: Tool, *, observer: Observer, figures: Figures, settings: Settings,
                  count: int | None = None) -> None:
    """Cold start of a large fleet, its memory; /metrics latency and CPU where there is one.

    Metric keys end in the fleet size (``bench/scaling.py`` runs it at several).
    """
    count = count or settings.large
    programs = sleepers(count)
    with supervising(tool, programs, settings.policy, observer) as supervised:
        pid = supervised.pid
        running_ns = wait_running(observer, {p.argv for p in programs}, start_timeout(count))
        figures.add(tool.name, f"cold_{count}", (running_ns - supervised.started_ns) / 1e9)
        figures.add(tool.name, f"cold_cpu_{count}", sample(pid).ticks / CLOCK_TICKS_PER_SECOND)
        time.sleep(settings.settle_seconds)
        if isinstance(tool, Reconciler):
            before = sample(pid)
            time.sleep(settings.large_idle_seconds)
            idle = usage(before, sample(pid))
            figures.add(tool.name, f"idle_cpu_{count}", idle.ticks_percent)
            figures.add(tool.name, f"idle_cpu_ns_{count}", idle.schedstat_percent)
            figures.add(tool.name, f"idle_wakeups_{count}", idle.wakeups_per_second)
            measure_scrapes(supervised, figures=figures, settings=settings, count=count,
                            idle_percent=idle.schedstat_percent)
        rss, uss = memory_mib(pid)
        figures.add(tool.name, f"rss_{count}", rss)
        figures.add(tool.name, f"uss_{count}", uss)
        figures.add(tool.name, f"threads_{count}", sample(pid).threads)


def measure_scrapes(supervised, *, figures: Figures, settings: Settings, count: int,
                    idle_percent: float) -> None:
    """GET /metrics as Prometheus does (keep-alive, gzip): latency; CPU per scrape."""
    host, port = metrics_address(supervised)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    name = supervised.tool.name
    try:
        scrape(connection)  # warm-up: the first one builds what later ones reuse
        before = sample(supervised.pid)
        for _ in range(settings.scrapes):
            figures.add(name, f"scrape_ms_{count}", scrape(connection) * 1000)
        after = sample(supervised.pid)
    finally:
        connection.close()
    window = usage(before, after)
    # What the scrapes cost on top of idling over the same window.
    per_scrape = max(0.0, window.cpu_seconds - idle_percent / 100 * window.seconds)
    per_scrape /= settings.scrapes
    figures.add(name, f"scrape_cpu_ms_{count}", per_scrape * 1000)
    figures.add(
        name, f"scrape_cpu_15s_{count}", idle_percent + per_scrape / SCRAPE_INTERVAL_SECONDS * 100
    )


def scrape(connection: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    response.read()
    seconds = time.perf_counter() - started
    if response.status != 200:
        raise BenchError(f"GET /metrics: HTTP {response.status}")
    return seconds


def measure_storm(tool: Tool, *, observer: Observer, figures: Figures,
                  settings: Settings) -> None:
    """Programs exiting after 0.1 s, restarted by each tool's own policy: CPU per restart."""
    count = settings.storm_programs
    programs = [Program(f"s{i:04d}", ("/bin/sleep", f"0.1{i:04d}")) for i in range(count)]
    argvs = {program.argv for program in programs}
    with supervising(tool, programs, settings.policy, observer) as supervised:
        deadline = time.monotonic() + start_timeout(count)
        while (observer.exec_count(argvs) or 0) < count:
            if observer.exec_count(argvs) is None:
                raise BenchError("counting restarts needs kernel process events (root)")
            if time.monotonic() >= deadline:
                raise BenchError("the programs did not all start")
            time.sleep(0.05)
        before, execs_before = sample(supervised.pid), observer.exec_count(argvs) or 0
        time.sleep(settings.storm_seconds)
        after, execs_after = sample(supervised.pid), observer.exec_count(argvs) or 0
    window = usage(before, after)
    restarts = execs_after - execs_before
    figures.add(tool.name, "storm_cpu", window.ticks_percent)
    figures.add(tool.name, "storm_restarts", restarts)
    if restarts:
        figures.add(tool.name, "storm_cpu_per_restart_ms", window.cpu_seconds / restarts * 1000)


def measure_apply(tool: Tool, *, observer: Observer, figures: Figures, settings: Settings,
                  rng: random.Random, round_index: int) -> None:
    """One new program added to a running fleet, K times: file written -> its exec."""
    programs = sleepers(settings.apply_programs)
    with supervising(tool, programs, settings.policy, observer) as supervised:
        wait_running(observer, {p.argv for p in programs}, start_timeout(len(programs)))
        time.sleep(max(settings.settle_seconds, 1.5))  # supervisord: all RUNNING first
        for j in range(settings.applies):
            name = f"n{round_index:02d}{j:03d}"
            program = Program(name, ("/bin/sleep", f"3600.9{round_index:02d}{j:03d}"))
            asked_ns = time.monotonic_ns()
            tool.add_program(supervised.workdir, program, settings.policy)
            running_ns = observer.wait_running({program.argv}, time.monotonic() + 30)
            if running_ns is None:
                raise BenchError(f"{name} did not start within 30 s of its config")
            figures.add(tool.name, "apply_ms", (running_ns - asked_ns) / 1e6)
            # Edits come at random moments, not in step with any periodic work of the tool.
            time.sleep(rng.uniform(0.1, settings.apply_pause_seconds))
