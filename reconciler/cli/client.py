"""Talking to a running daemon's control socket: the client, its failures, shared formatting."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import stat
import sys
import urllib.parse
from collections.abc import Callable, Coroutine
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


class Client:
    """A session on the control socket; every method returns the decoded JSON body."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def __aenter__(self) -> Client:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            "http://reconciler",
            connector=aiohttp.UnixConnector(path=str(self.socket_path)),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: object = None,
        timeout_seconds: float | None = READ_TIMEOUT_SECONDS,
    ) -> Any:
        aiohttp = self._aiohttp
        timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)
        try:
            async with self._session.request(
                method, API + path, params=params, json=json_body, timeout=timeout
            ) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(_unreachable(self.socket_path, exc.os_error)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ClientFailure(
                f"no answer from the reconciler at {self.socket_path}: {reason}"
            ) from exc
        error = body.get("error") if isinstance(body, dict) else None
        if status >= 400 and isinstance(error, dict):
            raise ApiFailure(str(error.get("code")), str(error.get("message")))
        if status >= 400 or not isinstance(body, dict):
            raise ClientFailure(
                f"unexpected answer (HTTP {status}) from {self.socket_path}: is it a reconciler?"
            )
        return body


def client_command(
    args: argparse.Namespace, talk: Callable[[Client], Coroutine[Any, Any, int]]
) -> int:
    """Run ``talk`` with a client on ``--socket``; failures become a line on stderr and 1."""

    async def session() -> int:
        async with Client(args.socket) as client:
            return await talk(client)

    try:
        return asyncio.run(session())
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
