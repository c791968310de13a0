"""The control API's HTTP connections: a request aiohttp cannot even parse gets DESIGN §5's
body too.

A request line or header longer than ``MAX_REQUEST_LINE_BYTES`` (a 10,000-character id),
a byte that is not HTTP, a bad ``Content-Length`` or chunk: aiohttp refuses those while
parsing, before any route or middleware, with its own text/plain page and a traceback in
the log for each. ``ApiServer`` serves with this handler instead, which answers them as
the ``errors`` middleware answers everything else, and logs one line: a malformed request
is the client's mistake, not the daemon's.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from reconciler.api.constants import MAX_REQUEST_LINE_BYTES
from reconciler.api.views import http_error_body

log = logging.getLogger("reconciler.api")


class Connection(web.RequestHandler):
    """aiohttp's connection handler, with DESIGN §5 bodies for what it refuses itself."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # it gives up there
        if status >= 500:
            log.error("control API: request failed", exc_info=exc)
            text = "internal error; the reconciler's log has the details"
        else:
            text = f"malformed HTTP request: {_reason(exc, message)}"
            log.warning("control API: refused a %s", text)
        response = web.json_response(http_error_body(status, text), status=status)
        response.force_close()  # the stream may be anywhere in the request: start afresh
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # A body that breaks off (a bad chunk) is found while aiohttp drains it after
        # the answer was sent: the client's doing, worth one line, not a traceback.
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError | web.RequestPayloadError):
            log.warning("control API: malformed HTTP request body: %s", _reason(exc, None))
            return
        super().log_exception(*args, **kwargs)


def _reason(exc: BaseException | None, message: str | None) -> str:
    if isinstance(exc, LineTooLong):
        # aiohttp's message quotes the line itself: never echo 8 KiB back.
        return f"request line or header longer than {MAX_REQUEST_LINE_BYTES} bytes"
    if isinstance(exc, HttpProcessingError) and exc.message:
        message = exc.message
    elif isinstance(exc, web.RequestPayloadError):
        message = str(exc)
    first = (message or "bad request").strip().splitlines()[0].rstrip(":")
    return first if len(first) <= 200 else first[:200] + "..."
