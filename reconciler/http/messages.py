"""What a handler of ``reconciler.http`` sees and gives back: ``Request``, ``Response``,
``HttpError``, and the ``Router`` that picks the handler."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class HttpError(Exception):
    """A refusal: ``status`` with ``message`` (and any extra ``headers``, e.g. ``Allow``)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    value: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(value).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})


def text_response(text: str, *, status: int = 200) -> Response:
    return Response(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


BodyReader = Callable[[], Awaitable[bytes]]


@dataclass(slots=True)
class Request:
    """One request, its head parsed. ``path`` is normalised (RFC 3986 §6.2.2: unreserved
    characters decoded, dot segments removed) and still percent-encoded; the body is read,
    bounded by the server's limit, with ``await read()``."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-case names; a repeated header's values are joined with ", "."""
    content_length: int | None
    chunked: bool
    peer: Any
    """The connection's socket (for ``SO_PEERCRED``), or ``None``."""
    _read: BodyReader
    match_info: dict[str, str] = field(default_factory=dict)

    @property
    def can_read_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    async def read(self) -> bytes:
        """The whole body; ``HttpError`` 413 past the limit, 400 when it is malformed."""
        return await self._read()


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The normalised path and the query (the first value of each name) of a request target."""
    raw_path, _, raw_query = target.partition("?")
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(name, value)
    return _remove_dot_segments(_decode_unreserved(raw_path)), query


def _decode_unreserved(path: str) -> str:
    if "%" not in path:
        return path
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        try:
            char = chr(int(code, 16)) if len(code) == 2 else ""
        except ValueError:
            char = ""
        out.append(char + part[2:] if char in _UNRESERVED and char else "%" + part)
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    kept: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                kept.append("")
        elif segment == "..":
            if kept:
                kept.pop()
            if last:
                kept.append("")
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes like ``/api/v1/collectors/{id}/pause``: a ``{name}`` is one non-empty path
    segment, given decoded in ``request.match_info``. A GET route answers HEAD too."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, pattern.split("/"), handler))

    def routes(self) -> list[tuple[str, str]]:
        """Each route's method and pattern, in the order they were added."""
        return [(method, "/".join(pattern)) for method, pattern, _ in self._routes]

    def resolve(self, request: Request) -> Handler:
        """The handler for ``request`` (its ``match_info`` filled); else 404 or 405."""
        segments = request.path.split("/")
        allowed: list[str] = []
        for method, pattern, handler in self._routes:
            match = _match(pattern, segments)
            if match is None:
                continue
            if request.method == method or (request.method == "HEAD" and method == "GET"):
                request.match_info = match
                return handler
            allowed += [method, "HEAD"] if method == "GET" else [method]
        reason = f"{request.method} {unquote(request.path, errors='replace')}"
        if allowed:
            allow = ", ".join(sorted(set(allowed)))
            raise HttpError(405, f"{reason}: Method Not Allowed", headers={"Allow": allow})
        raise HttpError(404, f"{reason}: Not Found")


def _match(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    found: dict[str, str] = {}
    for want, have in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not have:
                return None
            found[want[1:-1]] = unquote(have, errors="replace")
        elif want != have:
            return None
    return found
