"""What the control API's modules share: names, limits, error codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from reconciler.loop import Reconciler

if TYPE_CHECKING:
    from reconciler.api.server import ApiServer

API_PREFIX = "/api/v1"
ACTION_TIMEOUT_SECONDS = 30.0
"""How long pause and resume wait for the collector to get there (else 504 TIMEOUT)."""
RECHECK_SECONDS = 0.25
"""Re-read a collector's state at least this often while waiting, between loop passes."""
SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""On stop, requests still waiting (a pause under way) get this long before being cancelled."""

RECONCILER_KEY = web.AppKey("reconciler", Reconciler)
SERVER_KEY: web.AppKey[ApiServer] = web.AppKey("server")  # the server holding the app

# Protocol errors: no ReconcilerError stands for them, as they name no collector.
HTTP_ERRORS = {
    400: ("BAD_REQUEST", "Configuration"),
    403: ("FORBIDDEN", "Configuration"),
    404: ("NOT_FOUND", "Resource"),
    405: ("METHOD_NOT_ALLOWED", "Resource"),
}
