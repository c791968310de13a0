"""Liveness probes beyond "the process exists": exec, HTTP or TCP.

Run by the real driver every ``interval_seconds`` while a collector runs. An exec
probe is a child like any other: its exit is seen through the same pidfd
watcher, and a probe that overruns its timeout is killed with its group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import h11

from reconciler import __version__
from reconciler.process.driver import ProbeResult
from reconciler.process.exits import ExitWatcher
from reconciler.spec.models import Probe, url_without_password

log = logging.getLogger("reconciler.process")


def _os_reason(exc: OSError) -> str:
    """The system's words, "Connection refused", not asyncio's "Connect call failed (...)".

    A name with several addresses (``localhost``: ::1 and 127.0.0.1) that all fail gives
    asyncio's "Multiple exceptions: [Errno 111] Connect call failed (...), ...": each
    distinct reason once.
    """
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    text = str(exc.strerror or exc)  # a resolver error: "Name or service not known"
    if text.startswith("Multiple exceptions: "):
        errnos = dict.fromkeys(int(n) for n in re.findall(r"\[Errno (\d+)\]", text))
        if errnos:
            return "; ".join(os.strerror(n) for n in errnos)
    return text


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _exec_probe(
    argv: list[str],
    *,
    timeout_seconds: float,
    env: Mapping[str, str],
    cwd: str | None,
    watcher: ExitWatcher,
) -> ProbeResult:
    program = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if program is None:
        return ProbeResult(False, f"probe command {argv[0]!r} not found on PATH")
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int | None] = loop.create_future()
    try:
        popen = subprocess.Popen(
            [program, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return ProbeResult(False, f"probe command {program} failed to start: {exc.strerror}")
    except ValueError as exc:  # a NUL in an argument: no exec takes it
        return ProbeResult(False, f"probe command {program} cannot be run: {exc}")
    watcher.watch(popen, exited.set_result)
    try:
        code = await asyncio.wait_for(asyncio.shield(exited), timeout_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await exited
        return ProbeResult(False, f"probe command timed out after {timeout_seconds:g} s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await asyncio.shield(exited)
        raise
    if code == 0:
        return ProbeResult(True, "probe command exited 0")
    return ProbeResult(False, f"probe command exited with code {code}")


_READ_BYTES = 16384
_HANG_UP_SECONDS = 1.0
"""How long a finished probe waits for its connection to close before dropping it: a server
that streams on, or never reads again, costs no more."""
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
"""Kept as written in a request target; anything else (a space, non-ASCII) is %-encoded."""


class _Stream(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...


class _Plain:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self) -> bytes:
        return await self._reader.read(_READ_BYTES)


def _request(url: str) -> tuple[str, int, bool, h11.Request]:
    """Host, port, whether TLS, and the GET to send, for ``url``.

    Raises ``ValueError`` for a URL with no host or a bad port, or a host IDNA cannot encode.
    """
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = default if parts.port is None else parts.port
    if not parts.hostname:
        raise ValueError("no host")
    if ":" in parts.hostname:  # IPv6, from between the brackets; a zone as %25 in the URL
        host, authority = unquote(parts.hostname), f"[{parts.hostname}]"
    else:
        host = parts.hostname
        authority = host.encode("idna").decode("ascii")
    if port != default:
        authority += f":{port}"
    headers = [
        ("Host", authority),
        ("User-Agent", f"reconciler/{__version__}"),
        ("Accept", "*/*"),
        ("Connection", "close"),
    ]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(credentials.encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _TARGET_SAFE)
    return host, port, tls, h11.Request(method="GET", target=target, headers=headers)


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Close the connection; drop it if closing takes longer than ``_HANG_UP_SECONDS``."""
    writer.close()
    closed = False
    try:
        async with asyncio.timeout(_HANG_UP_SECONDS):
            await writer.wait_closed()
        closed = True
    except (OSError, TimeoutError):
        pass
    finally:  # also when cancelled meanwhile
        if not closed:
            writer.transport.abort()


async def _status(stream: _Stream, get: h11.Request) -> int:
    """Send ``get`` and read the answer's head, up to its status: never its body."""
    conn = h11.Connection(h11.CLIENT)
    await stream.send(conn.send(get) + conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()  # a head past 16 KiB is a RemoteProtocolError
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive())
        elif isinstance(event, h11.Response):
            return event.status_code
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("the server closed the connection without answering")
        # An informational answer (1xx) comes before the real one.


async def _http_status(url: str, *, timeout_seconds: float) -> int:
    """The status of ``GET url``, no redirect followed, within ``timeout_seconds``.

    The time limit covers connecting (TLS included), sending and reading the head, not the
    hang-up after it: a status read in time stands. An https URL loads ssl, the first time.
    """
    host, port, tls, get = _request(url)
    async with asyncio.timeout(timeout_seconds) as limit:
        reader, writer = await asyncio.open_connection(host, port)
    secure = None
    try:
        async with asyncio.timeout_at(limit.when()):
            if tls:
                from reconciler.process.tls import Connection

                secure = Connection(reader, writer, host)
                await secure.handshake()
            return await _status(secure or _Plain(reader, writer), get)
    finally:
        if secure is not None:
            secure.close_notify()
        await _hang_up(writer)


def _tls_failure(exc: OSError) -> str | None:
    """TLS's reason, when ``exc`` is a TLS error: only an https probe, which loads ssl, raises
    one."""
    if "reconciler.process.tls" not in sys.modules:
        return None
    from reconciler.process.tls import failure

    return failure(exc)


async def _http_probe(url: str, *, timeout_seconds: float) -> ProbeResult:
    """``GET url`` passes when its status is below 400; it never raises but when cancelled."""
    shown = url_without_password(url)
    try:
        status = await _http_status(url, timeout_seconds=timeout_seconds)
    except TimeoutError as exc:
        if exc.errno is not None:  # the kernel's connect timeout, before ours
            return ProbeResult(False, f"GET {shown}: {_os_reason(exc)}")
        return ProbeResult(False, f"GET {shown}: timed out after {timeout_seconds:g} s")
    except h11.LocalProtocolError as exc:  # a control character in the URL
        return ProbeResult(False, f"GET {shown}: not a URL to request ({exc})")
    except h11.ProtocolError as exc:
        # h11 may quote the bytes it refused: its reason only.
        reason = str(exc).split(": bytearray(", 1)[0].split(": b'", 1)[0][:200]
        return ProbeResult(False, f"GET {shown}: not an HTTP answer ({reason})")
    except OSError as exc:
        said = _tls_failure(exc)
        if said is not None:
            return ProbeResult(False, f"GET {shown}: TLS: {said}")
        return ProbeResult(False, f"GET {shown}: {_os_reason(exc)}")
    except ValueError as exc:  # no host, a port past 65535, a host IDNA cannot encode
        return ProbeResult(False, f"GET {shown}: not a URL to connect to ({exc})")
    return ProbeResult(status < 400, f"GET {shown}: HTTP {status}")


async def _tcp_probe(address: str, *, timeout_seconds: float) -> ProbeResult:
    host, port = _split_host_port(address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except TimeoutError:
        return ProbeResult(False, f"connect {address}: timed out after {timeout_seconds:g} s")
    except OSError as exc:
        return ProbeResult(False, f"connect {address}: {_os_reason(exc)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, f"connect {address}: ok")


async def run_probe(
    check: Probe, *, env: Mapping[str, str], cwd: str | None, watcher: ExitWatcher
) -> ProbeResult:
    """Run ``check`` once and say whether it passed, and why.

    Never raises but when cancelled: an exception would end the collector's probe loop
    with nothing to show for it, so one no probe expects is a failed probe, logged.
    """
    try:
        if check.exec is not None:
            return await _exec_probe(
                check.exec, timeout_seconds=check.timeout_seconds, env=env, cwd=cwd, watcher=watcher
            )
        if check.http is not None:
            return await _http_probe(check.http, timeout_seconds=check.timeout_seconds)
        assert check.tcp is not None  # the model guarantees exactly one probe
        return await _tcp_probe(check.tcp, timeout_seconds=check.timeout_seconds)
    except Exception as exc:
        log.exception("a probe failed unexpectedly")
        return ProbeResult(
            False, f"probe failed ({type(exc).__name__}); the reconciler's log has the details"
        )
