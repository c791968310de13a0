"""What the control API's modules share: names, limits, error codes."""

from __future__ import annotations

API_PREFIX = "/api/v1"
ACTION_TIMEOUT_SECONDS = 30.0
"""How long pause and resume wait for the collector to get there (else 504 TIMEOUT)."""
RECHECK_SECONDS = 0.25
"""Re-read a collector's state at least this often while waiting, between loop passes."""
SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""On stop, requests still waiting (a pause under way) get this long before being cancelled."""

PLAN_BODY_MAX_BYTES = 16 * 1024 * 1024
"""The largest request body (``POST /api/v1/plan``): a whole spec tree for ``reconciler diff``
fits, each spec file being at most 1 MiB. A larger body is 413, refused on its Content-Length
before any of it is read."""
MAX_PLAN_FILES = 10_000
"""The most spec files one ``POST /api/v1/plan`` may name."""
MAX_REQUEST_LINE_BYTES = 8190
"""The longest request line (method, path and query) and the longest header line: longer is
400 ``BAD_REQUEST``, answered before any route is looked up."""

# Protocol errors: no ReconcilerError stands for them, as they name no collector.
HTTP_ERRORS = {
    400: ("BAD_REQUEST", "Configuration"),
    403: ("FORBIDDEN", "Configuration"),
    404: ("NOT_FOUND", "Resource"),
    405: ("METHOD_NOT_ALLOWED", "Resource"),
}
