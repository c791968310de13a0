"""What moving one process into a cgroup costs: the floor of the crash -> replacement row.

Run (root, cgroup2 mounted): ``.venv/bin/python bench/cgroup_cost.py [--moves 12]``.

Each collector run gets its own cgroup, and its first set-up step joins it before anything
else (``reconciler.process.spawn``). The join is a write of a pid to ``cgroup.procs``. The
kernel takes ``cgroup_threadgroup_rwsem`` for writing on every such move, and a writer waits
for an RCU grace period unless a move happened within the last grace period or cgroup2 is
mounted with ``favordynmods``. A crash of one collector is such an isolated move, so its
replacement waits for a grace period (milliseconds) that neither peer, using no cgroups, pays.

Prints the mount's options, ``/sys/kernel/rcu_expedited``, and for each of mkdir, the move of a
sleeping child and rmdir: the median and max over ``--moves`` moves, each after a pause
(``--pause``, the isolated case of a crash) and back to back (the case of a cold start).
Changes no setting of the machine; every cgroup and child it makes is removed on exit.

Do not try ``favordynmods`` on a host whose figures you still need: on Linux 6.18, after
``mount -o remount,favordynmods`` and a remount without it (``mount(2)``, empty data), the
option was gone from ``/proc/mounts`` but an isolated move kept taking 0.4 ms instead of 6.35,
and still did after a second on-off cycle (``bench/compare/RESULTS.md``, 2026-12-03).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def cgroup2_mount() -> tuple[Path, str]:
    """The cgroup2 mount point and its options."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, kind, options, *_ = line.split()
        if kind == "cgroup2":
            return Path(point), options
    raise SystemExit("no cgroup2 mount")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


@contextlib.contextmanager
def scratch(root: Path) -> Iterator[Path]:
    """A parent cgroup for the measurement, removed on leaving."""
    base = root / f"reconciler-bench-{os.getpid()}"
    base.mkdir()
    try:
        yield base
    finally:
        for child in sorted(base.iterdir()):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        base.rmdir()


def _rmdir_when_empty(path: Path, deadline_seconds: float = 5.0) -> None:
    """rmdir once the kernel has taken the exited child out (EBUSY until then)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


def measure(base: Path, moves: int, pause: float) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"mkdir": [], "move": [], "rmdir": []}
    for index in range(moves):
        group = base / f"run{index}"
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        group.mkdir()
        times["mkdir"].append(_ms(started))
        child = subprocess.Popen(["sleep", "60"])
        try:
            if pause:
                time.sleep(pause)
            started = time.perf_counter()
            (group / "cgroup.procs").write_text(str(child.pid))
            times["move"].append(_ms(started))
        finally:
            child.kill()
            child.wait()
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        _rmdir_when_empty(group)
        times["rmdir"].append(_ms(started))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=12)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds before each step")
    args = parser.parse_args()
    root, options = cgroup2_mount()
    expedited = Path("/sys/kernel/rcu_expedited")
    print(f"cgroup2 at {root}: {options}")
    print(f"favordynmods: {'yes' if 'favordynmods' in options.split(',') else 'no'}")
    if expedited.exists():
        print(f"/sys/kernel/rcu_expedited: {expedited.read_text().strip()}")
    print()
    print("| step | isolated, ms median (max) | back to back, ms median (max) |")
    print("|---|---|---|")
    with scratch(root) as base:
        isolated = measure(base, args.moves, args.pause)
    with scratch(root) as base:
        packed = measure(base, args.moves, 0.0)
    for step in ("mkdir", "move", "rmdir"):
        cells = [
            f"{statistics.median(times[step]):.2f} ({max(times[step]):.2f})"
            for times in (isolated, packed)
        ]
        print(f"| {step} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
