"""The one source of time for the runtime, and a manual clock that tests advance.

Every deadline of the process layer and the reconcile loop — backoff
(``Wait.until``), graceful and force timeouts, probe intervals, uptimes —
reads ``Clock.now()`` and sleeps through ``Clock.sleep()`` or
``Clock.call_at()``. The real ``Clock`` is the running event loop's
``loop.time()``; ``ManualClock`` stands still until a test calls
``advance()``, so a test of a 60 s backoff takes microseconds (as kopf's tests
do with ``looptime``). Used by the executor, the controller and the drivers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

MIN_BREATHE_SECONDS = 0.002


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """Monotonic seconds from the running event loop, and its timers."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_at(when, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def breathe(self, seconds: float) -> None:
        """Let other work run for about ``seconds`` of real time (between loop passes).

        Under ``MIN_BREATHE_SECONDS`` it only yields once: the loop's timers wake no
        sooner than the next millisecond, so a 0.6 ms pause cost a crash's replacement
        about 1.2 ms (measured exit -> fork, 200 collectors).
        """
        await asyncio.sleep(seconds if seconds >= MIN_BREATHE_SECONDS else 0)

    async def wait(self, future: asyncio.Future[Any], timeout_seconds: float) -> bool:
        """Wait for ``future`` at most ``timeout_seconds``; whether it is done."""
        await asyncio.wait({future}, timeout=timeout_seconds)
        return future.done()


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """A clock that moves only when told to: ``advance(seconds)`` fires what falls due.

    For tests of the loop against ``FakeDriver``: nothing real waits, so a
    backoff series of 1, 2, 4 s runs in milliseconds.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        timer = _ManualTimer(callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    async def breathe(self, seconds: float) -> None:
        # Manual time does not pass while the loop works: nothing to space out.
        await asyncio.sleep(0)

    async def sleep(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_at(self._now + seconds, lambda: _resolve(done))
        await done

    async def wait(self, future: asyncio.Future[Any], timeout_seconds: float) -> bool:
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_at(self._now + timeout_seconds, lambda: _resolve(expired))
        try:
            await asyncio.wait({future, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            expired.cancel()
        return future.done()

    def next_deadline(self) -> float | None:
        """When the earliest pending timer falls due (``None``: none pending)."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing each timer at its own moment, in order.

        Between timers the event loop runs until it is idle, so what a timer
        set off (a restart, the next timer) happens before time moves on.
        """
        target = self._now + seconds
        await settle()
        while (due := self.next_deadline()) is not None and due <= target:
            _, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            timer.callback()
            await settle()
        self._now = target
        await settle()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def settle(max_rounds: int = 1000) -> None:
    """Let every ready task run until the event loop has nothing left to do now.

    Done when the loop's ready queue stayed empty for a few turns in a row
    (what is left waits on a timer or on I/O); bounded, so it never hangs.
    """
    loop = asyncio.get_running_loop()
    quiet = 0
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)
        quiet = quiet + 1 if ready is not None and not ready else 0
        if quiet >= 3:
            return
