"""``reconciler run`` freezes the objects its imports made before it builds anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_SCRIPT = r"""
import gc, sys
from reconciler import daemon
from reconciler.errors import InvalidSpec

seen = {}

def stand_in(options):
    seen["frozen"] = gc.get_freeze_count()
    seen["tracked"] = len(gc.get_objects())
    raise InvalidSpec("stand-in: no daemon built")

daemon.Daemon = stand_in
before = gc.get_freeze_count()
code = daemon.run(daemon.RunOptions(log_level="CRITICAL"))
print(code, before, seen["frozen"], seen["tracked"])
"""


def test_run_freezes_the_imports_before_it_builds_the_daemon() -> None:
    """In a process of its own: ``gc.freeze`` is process-wide, and ``run`` sets up logging."""
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=50, check=True
    )
    code, before, frozen, tracked = map(int, result.stdout.split())
    assert code == 1
    assert before == 0
    # The daemon's imports: tens of thousands of objects, out of the collector's reach.
    assert frozen > 20_000
    assert tracked < frozen
