"""Talking to a running daemon's control socket: the client, its failures, shared formatting."""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import socket
import stat
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_ERROR

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
        type=Path,
        metavar="PATH",
        default=Path(default),
        help=f"the reconciler's control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET}; "
        f"now {default})",
    )


def _unreachable(socket_path: Path, error: OSError | None) -> str:
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


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the control socket (a unix socket), from the standard library."""

    def __init__(self, socket_path: str, *, timeout_seconds: float | None) -> None:
        super().__init__("reconciler", timeout=timeout_seconds)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Requests on the control socket; every call returns the decoded JSON body.

    The standard library's ``http.client``, not aiohttp: a client command sends
    one request, and importing an asyncio HTTP stack for it cost more than the
    request itself.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

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
        url = API + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(json_body).encode() if json_body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection = _UnixConnection(str(self.socket_path), timeout_seconds=timeout_seconds)
        try:
            try:
                connection.connect()
            except OSError as exc:
                raise Unreachable(_unreachable(self.socket_path, exc)) from exc
            try:
                connection.request(method, url, body=data, headers=headers)
                response = connection.getresponse()
                status, raw = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                reason = str(exc) or type(exc).__name__
                raise ClientFailure(
                    f"no answer from the reconciler at {self.socket_path}: {reason}"
                ) from exc
        finally:
            connection.close()
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


def collector_path(collector_id: str) -> str:
    return "/collectors/" + urllib.parse.quote(collector_id, safe="")


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
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(text: str) -> str:
    return " ".join(text.split())
