"""Talking to a running daemon's control socket: the client, its failures, shared formatting.

What a ``reconciler status`` imports, measured with ``-X importtime`` (what it saves on each
call): ``_socket``, not ``socket`` (~5 ms: selectors, and the enums it makes of every
constant); no ``http.client`` (~30 ms: the email package it parses headers with), no
``urllib.parse``, no typing.
"""

from __future__ import annotations

import _socket
import errno
import json
import os
import stat
import sys

from reconciler.cli.common import EXIT_ERROR

TYPE_CHECKING = False  # not typing's: its import costs ~4 ms (type checkers take the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

DEFAULT_SOCKET = "/run/reconciler/api.sock"
SOCKET_ENV = "RECONCILER_SOCKET"
API = "/api/v1"
READ_TIMEOUT_SECONDS = 30.0
WAIT_POLL_SECONDS = 0.1
ERROR_COLUMN_MIN_WIDTH = 20


class ClientFailure(Exception):
    """The daemon could not be asked; printed as it is, exit 1."""


class Unreachable(ClientFailure):
    """Nothing answers on the socket (yet): ``wait`` keeps trying until its timeout."""


class ApiFailure(Exception):
    """The daemon answered with an error body; printed as ``CODE: message``, exit 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def socket_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    parser.add_argument(
        "--socket",
        # A str, not a Path: pathlib's import (urllib.parse with it) costs more than
        # a status request; callers that need a Path make one.
        metavar="PATH",
        default=default,
        help=f"the reconciler's control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET}; "
        f"now {default})",
    )


def _unreachable(socket_path: str, error: OSError | None) -> str:
    code = error.errno if error is not None else None
    hint = "is `reconciler run` running? use --socket or $" + SOCKET_ENV + " to point elsewhere"
    if code == errno.ENOENT:
        reason = "no such file"
    elif code == errno.ECONNREFUSED and not _is_socket(socket_path):
        reason = "not a socket"
    elif code == errno.ECONNREFUSED:
        reason = "connection refused: nothing listens (a socket left by a reconciler that is gone)"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        hint = "the socket is mode 0600: run this as the reconciler's user, e.g. with sudo"
    elif error is not None:
        reason = error.strerror or str(error)
    else:
        reason = "cannot connect"
    return f"cannot reach the reconciler at {socket_path}: {reason} ({hint})"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _BadAnswer(Exception):
    """Not an HTTP answer this client understands."""


def _exchange(
    socket_path: str, request: bytes, *, timeout_seconds: float | None
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request (``Connection: close``); the status and the body.

    A few lines of HTTP instead of ``http.client``: importing it (and the
    ``email`` package it parses headers with) took longer than the request.
    The daemon answers with a ``Content-Length`` body; a chunked one (from
    anything else on the socket) is read too.
    """
    # The C socket ``socket.socket`` subclasses: the same calls and errors (OSError, and
    # TimeoutError on the timeout), without socket.py's import.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout_seconds)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise Unreachable(_unreachable(socket_path, exc)) from exc
        sock.sendall(request)
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    return _parse_answer(b"".join(chunks))


def _parse_answer(raw: bytes) -> tuple[int, bytes]:
    head, separator, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if not separator or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise _BadAnswer("not an HTTP answer")
    try:
        status = int(status_line[1])
    except ValueError:
        raise _BadAnswer("no HTTP status") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        return status, _unchunk(body)
    length = headers.get(b"content-length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    return status, body


def _unchunk(body: bytes) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line, separator, rest = body.partition(b"\r\n")
        if not separator:
            raise _BadAnswer("a chunked body ended early")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise _BadAnswer("a bad chunk size") from None
        if size == 0:
            return b"".join(parts)
        parts.append(rest[:size])
        body = rest[size + 2 :]


class Client:
    """Requests on the control socket; every call returns the decoded JSON body.

    Plain sockets, not aiohttp or ``http.client``: a client command sends one
    request, and importing an HTTP stack for it cost more than the request.
    """

    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket_path = os.fspath(socket_path)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: object = None,
        timeout_seconds: float | None = READ_TIMEOUT_SECONDS,
    ) -> Any:
        query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in (params or {}).items())
        url = API + path + ("?" + query if query else "")
        data = json.dumps(json_body).encode() if json_body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: reconciler\r\nConnection: close\r\n"
        if data:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        elif method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        try:
            status, raw = _exchange(
                str(self.socket_path),
                head.encode() + b"\r\n" + data,
                timeout_seconds=timeout_seconds,
            )
        except (OSError, _BadAnswer) as exc:
            reason = str(exc) or type(exc).__name__
            raise ClientFailure(
                f"no answer from the reconciler at {self.socket_path}: {reason}"
            ) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if status >= 400 and isinstance(error, dict):
            raise ApiFailure(str(error.get("code")), str(error.get("message")))
        if status >= 400 or not isinstance(body, dict):
            raise ClientFailure(
                f"unexpected answer (HTTP {status}) from {self.socket_path}: is it a reconciler?"
            )
        return body


def client_command(args: argparse.Namespace, talk: Callable[[Client], int]) -> int:
    """Run ``talk`` with a client on ``--socket``; failures become a line on stderr and 1."""
    try:
        with Client(args.socket) as client:
            return talk(client)
    except (ClientFailure, ApiFailure) as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(text: str) -> str:
    """Percent-encode all but RFC 3986's unreserved characters (``urllib.parse.quote``
    with ``safe=""``; that module's import costs more than a status request)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def collector_path(collector_id: str) -> str:
    return "/collectors/" + _quote(collector_id)


def human_duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``4m10s``, ``45s``: two units at most, at a glance."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def utc(unix_time: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(text: str) -> str:
    return " ".join(text.split())
