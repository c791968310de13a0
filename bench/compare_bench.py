"""Side-by-side benchmark: the reconciler, supervisord and circus supervising the same workload.

Run: ``.venv/bin/python bench/compare_bench.py [--collectors 500] [--rounds 2]`` (about 5 min;
``--help`` for the rest). Each tool runs as its real command (``reconciler run``,
``supervisord -n``, ``circusd``) in a temp dir; supervisord and circus come from a throwaway venv
outside the project (``bench/compare/tools.py``). Measured on the same programs, ``--rounds``
times with the tools in rotating order (medians reported):

1. seconds from starting the supervisor with N ``/bin/sleep 3600`` programs configured until all
   N run (their exec, as the kernel reports it), and the supervisor's CPU spent by then;
2. the supervisor's own CPU (its threads, not its children) over an idle window; its RSS;
3. crash-to-restart: SIGKILL one program, time until its replacement has exec'd (each kill on a
   different program, random pauses between kills so a periodic checker is met at random phase);
4. stop-all (first ``--stop-rounds``): M programs that ignore SIGTERM, graceful timeout 1 s,
   SIGTERM to the supervisor, until it and its programs have exited; what of the tree is left;
5. grandchild leak (once): 2 programs that start a child and a ``setsid`` child, stopped with the
   tool's own CLI; how many grandchildren survive, with the tools' defaults and group options.

Prints the Markdown table and writes it to ``bench/compare/RESULTS.md``; the method and its
caveats are in ``bench/compare/README.md``. Every process started is stopped and reaped even on
failure or SIGTERM: the benchmark makes itself a child subreaper, so escapees come back to it.
Not a test, and not part of ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from compare.observe import Argv, Observer, is_alive, open_observer
from compare.tools import (
    Circus,
    Policy,
    Program,
    Reconciler,
    Supervisord,
    Tool,
    tools_venv,
    versions,
)
from figures import percentile

HERE = Path(__file__).resolve().parent
RESULTS_PATH = HERE / "compare" / "RESULTS.md"
PR_SET_CHILD_SUBREAPER = 36
FLEET_POLICY = Policy(graceful_timeout_seconds=10, group_signals=True)
STOP_POLICY = Policy(graceful_timeout_seconds=1, group_signals=True)
IGNORE_TERM_SCRIPT = 'trap "" TERM; sleep 3600 & wait'
LEAK_SCRIPT = "sleep 3600 & setsid sleep 3600 & wait"
# supervisord counts a program as RUNNING only after startsecs (1 s); stopping earlier would
# measure its STARTING path instead, so the stop tests wait this long after the last exec.
STARTSECS_SETTLE_SECONDS = 1.5
# After the start-up burst: the reconciler's state file and supervisord's STARTING->RUNNING
# transitions settle before the idle window opens.
IDLE_SETTLE_SECONDS = 2.0
CRASH_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 60.0
LEAK_GRACE_SECONDS = 3.0
TOOL_NAMES = ("reconciler", "supervisord", "circus")


class BenchError(Exception):
    """A measurement that could not complete (timeout, a tool's CLI failing)."""


@dataclass
class Supervised:
    tool: Tool
    workdir: Path
    popen: subprocess.Popen[bytes]
    started_ns: int
    shutdown_seconds: float | None = None
    """SIGTERM to exit, when the cleanup was what stopped the tool and it exited by itself."""


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


# --- process hygiene ------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Orphans of every supervised tree re-parent to us, so none is lost to init unkilled."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def raise_open_files_limit() -> None:
    # 500 programs cost each tool at least one fd (pidfd, pipe) each; inherited by the tools.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, create_time) of the whole tree below ``pid`` (one full /proc scan: slow)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found.append((child.pid, child.create_time()))
    return found


def kill_all(processes: Sequence[tuple[int, float]]) -> None:
    for pid, create_time in processes:
        if is_alive(pid, create_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def reap_orphans(deadline_seconds: float = 10.0) -> None:
    """Kill and reap every child of ours: by now only escapees re-parented to us are left."""
    deadline = time.monotonic() + deadline_seconds
    for child in psutil.Process().children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(child.pid, os.WNOHANG) == (0, 0):
                    time.sleep(0.01)
                    continue
            break


def shut_down(popen: subprocess.Popen[bytes], timeout_seconds: float) -> float | None:
    """The tool's own shutdown (SIGTERM), then SIGKILL; then whatever of its tree is left.

    Returns the seconds from SIGTERM to the tool's exit, or None if it had exited already or
    had to be killed.
    """
    if popen.poll() is not None:
        return None
    tree = descendants(popen.pid)
    seconds = None
    asked = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout_seconds)
        seconds = time.monotonic() - asked
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(10)
    kill_all(tree)
    return seconds


@contextlib.contextmanager
def supervising(
    tool: Tool, programs: Sequence[Program], policy: Policy, observer: Observer
) -> Iterator[Supervised]:
    """Run ``tool`` on ``programs`` in a temp dir; always stopped and cleaned up after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"compare-{tool.name}-"))
    tool.write_config(workdir, programs, policy)
    popen = supervised = None
    finished = False
    try:
        with (workdir / "supervisor.log").open("wb") as log:
            started_ns = time.monotonic_ns()
            popen = subprocess.Popen(
                tool.command(workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,  # a Ctrl-C in our terminal is ours to pass on
            )
        # Each tool imports for >100 ms before its first fork: watching now misses nothing.
        observer.watch(popen.pid)
        supervised = Supervised(tool, workdir, popen, started_ns)
        yield supervised
        finished = True
    finally:
        if popen is not None:
            seconds = shut_down(popen, timeout_seconds=policy.graceful_timeout_seconds + 60)
            if supervised is not None:
                supervised.shutdown_seconds = seconds
        reap_orphans()
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  kept {workdir} for its logs", file=sys.stderr)


def wait_tree(pid: int, size: int, deadline: float) -> list[tuple[int, float]]:
    """Poll (slowly: each scan reads all of /proc) until ``pid`` has ``size`` descendants."""
    while True:
        tree = descendants(pid)
        if len(tree) >= size:
            return tree
        if time.monotonic() >= deadline:
            raise BenchError(f"{len(tree)} of {size} processes in the tree")
        time.sleep(0.25)


def wait_running(observer: Observer, supervised: Supervised, argvs: set[Argv], timeout: float):
    running_ns = observer.wait_running(argvs, time.monotonic() + timeout)
    if running_ns is None:
        count = observer.running_count(argvs)
        raise BenchError(f"{count} of {len(argvs)} running after {timeout:.0f} s")
    return running_ns


# --- measurements ---------------------------------------------------------------------------


def measure_fleet(
    tool: Tool,
    *,
    observer: Observer,
    figures: Figures,
    collectors: int,
    idle_seconds: float,
    kills: Sequence[int],
    rng: random.Random,
) -> None:
    """Start-up time, start-up CPU, idle CPU, RSS, crash-to-restart, for N sleepers."""
    programs = [Program(f"c{i:04d}", ("/bin/sleep", f"3600.{i:04d}")) for i in range(collectors)]
    argvs = {program.argv for program in programs}
    with supervising(tool, programs, FLEET_POLICY, observer) as supervised:
        process = psutil.Process(supervised.popen.pid)
        running_ns = wait_running(observer, supervised, argvs, max(120.0, collectors * 0.5))
        startup_cpu = process.cpu_times()
        figures.add(tool.name, "startup", (running_ns - supervised.started_ns) / 1e9)
        figures.add(tool.name, "startup_cpu", startup_cpu.user + startup_cpu.system)

        time.sleep(IDLE_SETTLE_SECONDS)
        before, opened = process.cpu_times(), time.monotonic()
        time.sleep(idle_seconds)
        after, closed = process.cpu_times(), time.monotonic()
        busy = after.user + after.system - before.user - before.system
        # max(): the difference of two float sums can come out as -0.0.
        figures.add(tool.name, "idle_cpu", max(0.0, busy) / (closed - opened) * 100)
        figures.add(tool.name, "rss", process.memory_info().rss / 2**20)
        figures.add(tool.name, "threads", process.num_threads())
        figures.add(tool.name, "fds", process.num_fds())

        for index in kills:
            argv = programs[index].argv
            pid = observer.pid_of(argv)
            if pid is None:
                raise BenchError(f"{programs[index].name} is not running before its kill")
            killed_ns = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            replaced_ns = observer.wait_replaced(
                argv, pid, time.monotonic() + CRASH_TIMEOUT_SECONDS
            )
            if replaced_ns is None:
                raise BenchError(
                    f"{programs[index].name} not restarted in {CRASH_TIMEOUT_SECONDS} s"
                )
            figures.add(tool.name, "crash", (replaced_ns - killed_ns) / 1e6)
            # Crashes come at random moments: a tool that checks periodically (circus every
            # check_delay) must not be measured always right after its check.
            time.sleep(rng.uniform(0.0, 1.0))
    if supervised.shutdown_seconds is not None:
        figures.add(tool.name, "shutdown", supervised.shutdown_seconds)


def measure_stop_all(
    tool: Tool, *, observer: Observer, figures: Figures, count: int, metric: str = "stop_all"
) -> None:
    """SIGTERM to the supervisor of ``count`` programs that ignore SIGTERM, until all is gone."""
    programs = [
        Program(f"t{i:04d}", ("/bin/sh", "-c", IGNORE_TERM_SCRIPT, f"t{i:04d}"))
        for i in range(count)
    ]
    with supervising(tool, programs, STOP_POLICY, observer) as supervised:
        pid = supervised.popen.pid
        wait_running(observer, supervised, {program.argv for program in programs}, 120.0)
        tree = wait_tree(pid, 2 * count, time.monotonic() + 60)
        time.sleep(STARTSECS_SETTLE_SECONDS)
        direct = {observer.pid_of(program.argv) for program in programs}
        supervisor_and_programs = [pid, *direct]
        observer.expect_exits([*tree, (pid, psutil.Process(pid).create_time())])
        asked_ns = time.monotonic_ns()
        supervised.popen.send_signal(signal.SIGTERM)
        # supervisord stops one [program:] group after the other: allow 2 s a program.
        timeout = STOP_TIMEOUT_SECONDS + 2 * count * STOP_POLICY.graceful_timeout_seconds
        if observer.wait_exited([pid], time.monotonic() + timeout) is None:
            raise BenchError(f"still running {timeout:.0f} s after SIGTERM")
        stopped_ns = observer.wait_exited(
            supervisor_and_programs, time.monotonic() + LEAK_GRACE_SECONDS
        )
        # What is still alive a little after the supervisor's exit has leaked.
        deadline = time.monotonic() + LEAK_GRACE_SECONDS
        while any(is_alive(*entry) for entry in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        figures.add(tool.name, f"{metric}_left", sum(is_alive(*entry) for entry in tree))
        if stopped_ns is None:
            raise BenchError("programs outlived their supervisor")
        figures.add(tool.name, metric, (stopped_ns - asked_ns) / 1e9)


def measure_leak(tool: Tool, *, observer: Observer, figures: Figures, group_signals: bool) -> None:
    """Stop 2 programs (each with a child and a setsid child) via the tool; count survivors."""
    programs = [Program(f"g{i}", ("/bin/sh", "-c", LEAK_SCRIPT, f"g{i}")) for i in range(2)]
    policy = Policy(graceful_timeout_seconds=1, group_signals=group_signals)
    with supervising(tool, programs, policy, observer) as supervised:
        argvs = {program.argv for program in programs}
        wait_running(observer, supervised, argvs, 60.0)
        tree = wait_tree(supervised.popen.pid, 6, time.monotonic() + 30)
        direct = [observer.pid_of(program.argv) for program in programs]
        grandchildren = [entry for entry in tree if entry[0] not in direct]
        try:
            observer.expect_exits(entry for entry in tree if entry[0] in direct)
            for program in programs:
                tool.stop_program(supervised.workdir, program.name)
            if observer.wait_exited(direct, time.monotonic() + 30) is None:
                raise BenchError("the programs did not stop")
            deadline = time.monotonic() + LEAK_GRACE_SECONDS
            while any(is_alive(*entry) for entry in grandchildren) and time.monotonic() < deadline:
                time.sleep(0.1)
            metric = "leak_group" if group_signals else "leak_default"
            figures.add(tool.name, metric, sum(is_alive(*entry) for entry in grandchildren))
        finally:
            kill_all(grandchildren)


def measured(figures: Figures, tool: Tool, label: str, run, **kwargs) -> None:
    """Run one measurement; a failure is recorded in the table, and the run goes on."""
    started = time.monotonic()
    try:
        run(tool, figures=figures, **kwargs)
    except (BenchError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        figures.errors[tool.name][label] = f"{type(exc).__name__}: {exc}"
        print(f"  {tool.name} {label}: FAILED: {exc}", file=sys.stderr)
    print(f"  {tool.name} {label}: {time.monotonic() - started:.1f} s", file=sys.stderr)


# --- report ---------------------------------------------------------------------------------


def spread(values: list[float], digits: int) -> str:
    """Median, and the range over rounds when there was more than one."""
    middle = f"{statistics.median(values):.{digits}f}"
    if min(values) == max(values):
        return middle
    return f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def cell(figures: Figures, tool: str, metric: str, render) -> str:
    values = figures.values[tool].get(metric)
    if values:
        return render(values)
    error = figures.errors[tool].get(metric)
    return f"failed: {error}" if error else "-"


def table(figures: Figures, args: argparse.Namespace) -> str:
    kills = args.rounds * args.crashes_per_round

    def fixed(digits: int):
        return lambda values: spread(values, digits)

    def crash(fraction: float):
        return lambda values: f"{percentile(values, fraction):.1f}"

    rows = [
        (f"seconds to all {args.collectors} running", "startup", fixed(2)),
        ("supervisor CPU seconds spent by then", "startup_cpu", fixed(2)),
        (f"idle CPU, % of one core ({args.idle_seconds:g} s)", "idle_cpu", fixed(2)),
        ("RSS, MiB", "rss", fixed(1)),
        ("threads", "threads", fixed(0)),
        ("open fds", "fds", fixed(0)),
        (f"crash to replacement exec, ms, median ({kills} kills)", "crash", crash(0.5)),
        ("crash to replacement exec, ms, p99", "crash", crash(0.99)),
        (
            f"stop-all, {args.stop_collectors} TERM-ignoring programs, graceful 1 s: s",
            "stop_all",
            fixed(2),
        ),
        ("processes of the tree alive 3 s after that", "stop_all_left", fixed(0)),
        ("the same, supervisord programs all in one [group:], s", "stop_all_grouped", fixed(2)),
        (f"shutdown with {args.collectors} sleepers (they obey SIGTERM), s", "shutdown", fixed(2)),
    ]
    lines = ["| metric | " + " | ".join(TOOL_NAMES) + " |", "|---" * (len(TOOL_NAMES) + 1) + "|"]
    for label, metric, render in rows:
        cells = [cell(figures, name, metric, render) for name in TOOL_NAMES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        'Grandchild leak: 2 programs `sh -c "sleep 3600 & setsid sleep 3600 & wait"` stopped',
        "with the tool's own CLI; grandchildren still alive (of 4) 3 s after the programs exited.",
        "",
        "| options | " + " | ".join(TOOL_NAMES) + " |",
        "|---" * (len(TOOL_NAMES) + 1) + "|",
    ]
    leak_rows = [
        ("tool defaults", "leak_default"),
        ("group options: supervisord stopasgroup+killasgroup, circus stop_children", "leak_group"),
    ]
    for label, metric in leak_rows:
        cells = [cell(figures, name, metric, lambda v: f"{v[0]:.0f} of 4") for name in TOOL_NAMES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    return f"nproc {usable}, {model}, Linux {platform.release()} ({platform.machine()})"


def per_round(figures: Figures) -> list[str]:
    """The values behind each median, so that the noise between rounds shows."""
    lines = []
    for metric in ("startup", "startup_cpu", "idle_cpu", "shutdown", "stop_all"):
        cells = []
        for name in TOOL_NAMES:
            values = figures.values[name].get(metric, [])
            if values:
                cells.append(f"{name} " + ", ".join(f"{value:.2f}" for value in values))
        if cells:
            lines.append(f"- {metric}: " + "; ".join(cells))
    return lines


def write_results(text: str, *, args, observer, tool_versions, notes: list[str]) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    listed = ", ".join(f"{name} {version}" for name, version in tool_versions.items())
    command = shlex.join([".venv/bin/python", "bench/compare_bench.py", *sys.argv[1:]])
    header = [
        "# reconciler vs supervisord vs circus",
        "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- Python {platform.python_version()}; {listed}",
        f"- N = {args.collectors} (`/bin/sleep 3600`), {args.rounds} rounds, "
        f"stop-all with {args.stop_collectors} programs",
        f"- command: `{command}`",
        f"- observed with: {observer.name}",
        "- figures: median over rounds (range in brackets); crash latencies pooled over rounds",
        "",
    ]
    body = "\n".join([*header, text, "", "Notes from this run:", "", *notes, ""])
    RESULTS_PATH.write_text(body)


# --- main -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, observer: Observer, tools: list[Tool]) -> Figures:
    figures = Figures()
    rng = random.Random(args.seed)
    for round_index in range(args.rounds):
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"round {round_index + 1}/{args.rounds} (load average {load})", file=sys.stderr)
        figures.loads.append(load)
        # Spread the kills over the fleet, and over different programs in each round.
        kills = [
            (k * args.collectors // args.crashes_per_round + round_index) % args.collectors
            for k in range(args.crashes_per_round)
        ]
        # Rotate the order so that no tool always runs first (or after the same neighbour).
        shift = round_index % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            measured(
                figures,
                tool,
                "startup",
                measure_fleet,
                observer=observer,
                collectors=args.collectors,
                idle_seconds=args.idle_seconds,
                kills=kills,
                rng=rng,
            )
            if round_index < args.stop_rounds:
                measured(
                    figures,
                    tool,
                    "stop_all",
                    measure_stop_all,
                    observer=observer,
                    count=args.stop_collectors,
                )
            if round_index < args.stop_rounds and isinstance(tool, Supervisord):
                grouped = Supervisord(tool.venv, one_group=True)
                measured(
                    figures,
                    grouped,
                    "stop_all_grouped",
                    measure_stop_all,
                    observer=observer,
                    count=args.stop_collectors,
                    metric="stop_all_grouped",
                )
    print("grandchild leak check", file=sys.stderr)
    for group_signals in (False, True):
        for tool in tools:
            metric = "leak_group" if group_signals else "leak_default"
            measured(
                figures, tool, metric, measure_leak, observer=observer, group_signals=group_signals
            )
    return figures


def parse_args() -> argparse.Namespace:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", type=int, default=500, help="N (at most 9999)")
    parser.add_argument("--stop-collectors", type=int, default=50, help="M for stop-all")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--stop-rounds", type=int, default=1, help="rounds that also run stop-all (slow)"
    )
    parser.add_argument(
        "--tools", default=",".join(TOOL_NAMES), help="comma-separated subset of the tools"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--crashes-per-round", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tools-venv",
        type=Path,
        default=cache / "reconciler-bench" / f"tools-py{sys.version_info[0]}{sys.version_info[1]}",
        help="throwaway venv for supervisor and circus (created if missing)",
    )
    parser.add_argument("--polling", action="store_true", help="psutil polling, not kernel events")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = parser.parse_args()
    if not 1 <= args.collectors <= 9999 or args.stop_collectors < 1:
        parser.error("--collectors must be 1..9999 and --stop-collectors at least 1")
    args.crashes_per_round = min(args.crashes_per_round, args.collectors)
    return args


def main() -> None:
    args = parse_args()
    # A SIGTERM to the benchmark unwinds like Ctrl-C: every supervisor is still shut down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise_open_files_limit()
    subreaper = become_subreaper()
    venv = tools_venv(args.tools_venv)
    executable = Path(sys.executable).with_name("reconciler")
    everyone: list[Tool] = [Reconciler(executable), Supervisord(venv), Circus(venv)]
    tools = [tool for tool in everyone if tool.name in args.tools.split(",")]
    observer = open_observer(polling=args.polling)
    print(f"observing with {observer.name}", file=sys.stderr)
    me = psutil.Process()
    started, cpu_before = time.monotonic(), me.cpu_times()
    load_before = os.getloadavg()
    try:
        figures = run(args, observer, tools)
    finally:
        observer.close()
        reap_orphans()
    cpu_after = me.cpu_times()
    own_cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    elapsed = time.monotonic() - started
    text = table(figures, args)
    print(text)
    notes = [
        f"- wall time {elapsed:.0f} s; the benchmark's own CPU {own_cpu:.1f} s "
        f"({own_cpu / elapsed * 100:.1f} % of one core: its /proc scans in the stop and leak "
        "tests, the tools' CLIs, the event reader)",
        "- load average (1, 5, 15 min) at start "
        + ", ".join(f"{value:.2f}" for value in load_before)
        + ", at end "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        f"- kernel event overflows (resynchronised from /proc): {observer.overflows}",
        f"- benchmark is a child subreaper: {subreaper}",
        *(
            f"- load average at the start of round {i + 1}: {load}"
            for i, load in enumerate(figures.loads)
        ),
    ]
    for name, errors in figures.errors.items():
        notes += [f"- {name} {metric}: {error}" for metric, error in errors.items()]
    notes += ["", "Values per round (the inputs of the medians):", "", *per_round(figures)]
    print("\n".join(["", *notes]))
    if not args.no_write:
        write_results(text, args=args, observer=observer, tool_versions=versions(venv), notes=notes)
        print(f"\nwritten to {RESULTS_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
