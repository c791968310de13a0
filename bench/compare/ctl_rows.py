"""The ``ctl`` group: only the no-op control command's round trip, on an idle fleet.

Used by ``bench/compare_bench.py --rows ctl``: the ``fleet`` group measures the same row (the
same code: a warm-up run, then ``ctl_runs`` timed runs of each tool's ``status``), among its
idle window and crash kills, which take minutes; this starts the fleet, lets it settle and times
only the command.
"""

from __future__ import annotations

import time

from compare.observe import Observer
from compare.rows import Figures, Settings, sleepers, start_timeout
from compare.session import supervising, timed_command, wait_running
from compare.tools import Tool


def measure_ctl(tool: Tool, *, observer: Observer, figures: Figures, settings: Settings) -> None:
    """``--fleet`` programs running, settled: the tool's ``status`` timed ``ctl_runs`` times."""
    programs = sleepers(settings.fleet)
    with supervising(tool, programs, settings.policy, observer) as supervised:
        wait_running(observer, {p.argv for p in programs}, start_timeout(settings.fleet))
        time.sleep(settings.settle_seconds)
        command = tool.control_command(supervised.workdir)
        timed_command(command)  # warm-up: page cache, the daemon's first answer
        for _ in range(settings.ctl_runs):
            figures.add(tool.name, "ctl_ms", timed_command(command) * 1000)
