"""Names and numbers the metrics modules share."""

from __future__ import annotations

import os

ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")
"""``action`` label values of ``reconciler_actions_total`` (DESIGN §9)."""
RESULTS = ("success", "error")
DURATION_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""A pass plans and starts tasks without awaiting them: sub-millisecond to tens of ms."""
SLOW_SCRAPE_SECONDS = 1.0
CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"
"""The ``Content-Type`` of ``/metrics``: prometheus_client's ``CONTENT_TYPE_LATEST`` (tested)."""


def go_float(value: float) -> str:
    """A value as the text format writes it: Go's ``strconv.FormatFloat(value, 'g', -1, 64)``,
    as prometheus_client's ``floatToGoString`` writes it (tested against it).

    Python's ``repr`` is the shortest text that reads back as the same float,
    as Go's is; they differ in the names of the infinities and NaN, and in
    that Go writes an exponent from 1e6 on (``1.5e+06``), where ``repr``
    waits for 1e16.
    """
    value = float(value)
    if value != value:
        return "NaN"
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    text = repr(value)
    if value < GO_EXPONENT_FROM or "e" in text:
        return text
    whole, _, fraction = text.partition(".")
    digits = (whole + fraction).rstrip("0")
    mantissa = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
    return f"{mantissa}e+{len(whole) - 1:02d}"


_INF = float("inf")
GO_EXPONENT_FROM = 1e6
"""Go writes a value this large or larger with an exponent."""
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
