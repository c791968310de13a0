"""The one source of time for the process layer: the running event loop's clock.

Backoff deadlines, uptimes and timeouts all read it, so a test can drive them
with a loop whose clock it controls.
"""

from __future__ import annotations

import asyncio


def now() -> float:
    """Monotonic seconds, from the running event loop."""
    return asyncio.get_running_loop().time()
