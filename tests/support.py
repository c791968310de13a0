"""Test helpers: waiting for conditions with a deadline, and finding leftovers.

Tests never synchronise with a bare sleep: they wait for what they expect to
become true, and fail with a clear message when it does not in time.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

SESSION_MARK = f"reconciler-test-{uuid.uuid4().hex[:12]}"
"""Put in every test collector's environment, so any survivor can be found."""
MARK_ENV = "RECONCILER_TEST_SESSION"


async def eventually(
    predicate: Callable[[], object | Awaitable[object]],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "",
) -> object:
    """Wait until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message or predicate} ({last!r})")
        await asyncio.sleep(interval)


def marked_pids(mark: str = SESSION_MARK) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``mark``."""
    found = []
    needle = f"{MARK_ENV}={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat[stat.rindex(b")") + 2 :][:1] not in b"ZX":
            found.append(int(entry))
    return found


def kernel_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :][:1].decode()


def alive(pid: int) -> bool:
    return kernel_state(pid) not in (None, "Z", "X")
