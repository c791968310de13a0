"""HTTP/1.1 for the control API and the metrics listener: asyncio streams parsed by h11.

aiohttp served both before; it and its client cost the daemon 12 MiB and 240 ms of
start-up, for two listeners with a dozen routes between them.
"""

from reconciler.http.messages import (
    HttpError,
    Request,
    Response,
    Router,
    json_response,
    text_response,
)
from reconciler.http.server import HttpServer

__all__ = [
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "Router",
    "json_response",
    "text_response",
]
