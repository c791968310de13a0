"""Adopting processes a previous manager started: identity checks, stop, crash."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from reconciler import CollectorProcessManager, CollectorState, ProcessNotFound
from reconciler.process import process_start_ticks
from tests.conftest import collector
from tests.support import MARK_ENV, SESSION_MARK, alive, eventually


@pytest.fixture
def orphan() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, as an earlier manager would have left it."""
    process = subprocess.Popen(
        ["/bin/sleep", "300"], start_new_session=True, env={MARK_ENV: SESSION_MARK}
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


async def test_adopt_then_stop(manager: CollectorProcessManager, orphan) -> None:
    ticks = process_start_ticks(orphan.pid)
    assert ticks is not None
    await manager.adopt_collector(
        "a",
        "sleep",
        collector("/bin/sleep", "300"),
        pid=orphan.pid,
        start_ticks=ticks,
        started_wall=time.time() - 30,
    )
    status = manager.status("a")
    assert status.state == CollectorState.RUNNING and status.pid == orphan.pid
    assert 29 < status.uptime_seconds < 60
    identity = manager.run_identity("a")
    assert identity is not None and identity.pid == orphan.pid
    await manager.stop_collector("a")
    assert orphan.wait(timeout=5) == -signal.SIGTERM
    assert manager.status("a").state == CollectorState.STOPPED


async def test_recycled_pid_is_not_adopted(manager: CollectorProcessManager, orphan) -> None:
    ticks = process_start_ticks(orphan.pid)
    assert ticks is not None
    with pytest.raises(ProcessNotFound, match="no longer running"):
        await manager.adopt_collector(
            "a",
            "sleep",
            collector("/bin/sleep", "300"),
            pid=orphan.pid,
            start_ticks=ticks + 1,
            started_wall=time.time(),
        )
    assert alive(orphan.pid), "a process that is not the collector must be left alone"


async def test_adopted_crash_restarts_under_the_policy(
    manager: CollectorProcessManager, orphan
) -> None:
    ticks = process_start_ticks(orphan.pid)
    assert ticks is not None
    await manager.adopt_collector(
        "a",
        "sleep",
        collector("/bin/sleep", "300"),
        pid=orphan.pid,
        start_ticks=ticks,
        started_wall=time.time(),
    )
    orphan.kill()
    await eventually(lambda: manager.status("a").pid not in (None, orphan.pid))
    status = manager.status("a")
    assert status.restart_count == 1 and status.last_exit_code is None
    assert "status unknown" in (status.last_error or "")
