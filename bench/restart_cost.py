"""What one automatic restart costs the daemon in CPU, and what each of its parts adds.

Run: ``.venv/bin/python bench/restart_cost.py [--collectors 20] [--seconds 15] [--rounds 3]``.

``reconciler run`` (in a child interpreter) supervises ``--collectors`` programs that exit
after 0.1 s, with a 1 ms restart backoff, so that it restarts about as fast as they exit. The
daemon's CPU (every thread's ``schedstat`` run time, in ns) over ``--seconds``, divided by the
restarts in that window (its ``pid`` log lines), is one figure. Four variants, each measured
``--rounds`` times in turn (a change in the machine's load hits all alike):

- ``as shipped``: a cgroup per run where one is delegated (root: always here), a crash record
  per crash, the state file after each change;
- ``no crash records``: ``CrashRecorder.record`` does nothing;
- ``no state file``: the daemon's ``_save_state`` does nothing;
- both of those;
- ``process groups instead of cgroups``: as where no cgroup is delegated to the reconciler
  (its own way to find a run's leftovers, not none).

Without crash records and state file is what a supervisor without those promises would pay
here: the exit watch, the plan, the spawn, the events, metrics and log lines. The variants
patch the daemon in the child only; nothing of the product changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare.procstat import sample

VARIANTS = (
    ("as shipped", ""),
    ("no crash records", "crashes"),
    ("no state file", "state"),
    ("no crash records, no state file", "crashes,state"),
    ("process groups instead of cgroups", "cgroups"),
)
CONFIG = (
    "[process_manager]\nrestart_backoff_initial_seconds = 0.001\n"
    "restart_backoff_max_seconds = 0.001\n"
)
WARM_UP_SECONDS = 3.0

CHILD = r"""
import sys
work, without = sys.argv[1], set(filter(None, sys.argv[2].split(",")))
if "cgroups" in without:
    from reconciler.process.cgroup import CgroupTree
    CgroupTree.detect = classmethod(lambda cls, *args, **kwargs: None)
if "crashes" in without:
    from reconciler.crashes import CrashRecorder
    CrashRecorder.record = lambda self, collector_id, **_: {"id": collector_id}
if "state" in without:
    from reconciler.daemon import Daemon
    Daemon._save_state = lambda self: None
from reconciler.cli import main
sys.exit(main(["run", "--config", f"{work}/reconciler.toml", "--specs", f"{work}/specs",
               "--state-dir", f"{work}/state", "--socket", f"{work}/api.sock",
               "--metrics-address", "127.0.0.1:0"]))
"""


def restarts(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if ": pid " in line)


def measure(without: str, *, collectors: int, seconds: float) -> float:
    """CPU ms per restart of one daemon run with the parts in ``without`` taken out."""
    with tempfile.TemporaryDirectory(prefix="restart-cost-") as temporary:
        work = Path(temporary)
        (work / "specs").mkdir()
        (work / "reconciler.toml").write_text(CONFIG)
        for n in range(collectors):
            (work / "specs" / f"s{n:03d}.toml").write_text(
                f'type = "bench"\nbinary_path = "/bin/sleep"\nargs = ["0.1{n:03d}"]\n'
                'log = "null"\nmax_restarts = "unlimited"\n'
            )
        log = work / "daemon.log"
        with log.open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(work), without], stderr=stderr
            )
        try:
            time.sleep(WARM_UP_SECONDS)  # a fixed window, not a synchronisation
            if child.poll() is not None:
                raise SystemExit(f"the daemon exited: {log.read_text()[-2000:]}")
            before, restarts_before = sample(child.pid), restarts(log)
            time.sleep(seconds)
            after, restarts_after = sample(child.pid), restarts(log)
        finally:
            child.send_signal(signal.SIGTERM)  # the daemon stops its collectors
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    count = restarts_after - restarts_before
    if count <= 0:
        raise SystemExit(f"no restarts in {seconds} s ({without or 'as shipped'})")
    return (after.run_ns - before.run_ns) / 1e6 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--collectors", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    for _ in range(args.rounds):
        for name, without in VARIANTS:
            figures[name].append(
                measure(without, collectors=args.collectors, seconds=args.seconds)
            )
    print(f"{args.collectors} programs exiting after 0.1 s, 1 ms backoff, {args.seconds:g} s "
          f"windows, {args.rounds} rounds\n")
    print("| daemon | CPU per restart, ms: median (range) |")
    print("|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.3f} "
              f"({min(values):.3f}-{max(values):.3f}) |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
