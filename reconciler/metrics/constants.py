"""Names and numbers the metrics modules share."""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client.utils import floatToGoString

ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")
"""``action`` label values of ``reconciler_actions_total`` (DESIGN §9)."""
RESULTS = ("success", "error")
DURATION_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""A pass plans and starts tasks without awaiting them: sub-millisecond to tens of ms."""
SLOW_SCRAPE_SECONDS = 1.0

go_float: Callable[[float], str] = floatToGoString
"""How the text format writes a value (``floatToGoString`` has no annotations)."""
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
