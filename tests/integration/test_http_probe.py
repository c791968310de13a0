"""The HTTP probe against real servers that answer raw bytes: what passes, what fails and
says why, and that it reads no more than the answer's head."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from reconciler.process.health import _http_probe

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.port = 0


@contextlib.asynccontextmanager
async def serving(reply: Reply, *, read_request: bool = True) -> AsyncIterator[Server]:
    server = Server()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if read_request:
                server.requests.append(await reader.readuntil(b"\r\n\r\n"))
            await reply(reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            server.closed.set()

    listener = await asyncio.start_server(connected, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def answering(head: bytes) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)

    return reply


async def never_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the probe hangs up


@pytest.mark.parametrize(
    ("head", "passed", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True, "HTTP 200"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", False, "HTTP 503"),
        (b"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:1/\r\n\r\n", True, "HTTP 301"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", True, "HTTP 204"),
        (b"NOT HTTP\r\n\r\n", False, "not an HTTP answer"),
        (b"", False, "not an HTTP answer"),
    ],
)
async def test_the_status_decides(head: bytes, passed: bool, said: str) -> None:
    async with serving(answering(head)) as server:
        url = f"http://127.0.0.1:{server.port}/healthz?deep=1"
        result = await _http_probe(url, timeout_seconds=5)
    assert (result.ok, said in result.detail) == (passed, True), result.detail
    assert result.detail.startswith(f"GET {url}: ")
    request = server.requests[0].decode()
    assert request.startswith("GET /healthz?deep=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}" in request.lower()


async def test_an_endless_body_is_not_read() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            await writer.drain()

    async with serving(endless) as server:
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=5)
        assert result.ok, result.detail
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_a_server_that_never_answers_times_out_and_is_hung_up_on() -> None:
    async with serving(never_answering) as server:
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=0.3)
        assert (result.ok, result.detail.endswith("timed out after 0.3 s")) == (False, True)
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_a_cancelled_probe_closes_its_connection() -> None:
    async with serving(never_answering) as server:
        probe = asyncio.create_task(
            _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=30)
        )
        async with asyncio.timeout(5):
            while not server.requests:
                await asyncio.sleep(0.005)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_a_refused_connection_says_so() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = await _http_probe(f"http://127.0.0.1:{port}/", timeout_seconds=5)
    assert not result.ok and "refused" in result.detail.lower(), result.detail


async def test_credentials_are_sent_and_the_password_never_shown() -> None:
    async with serving(answering(b"HTTP/1.1 401 Unauthorized\r\n\r\n")) as server:
        url = f"http://probe:s3cr%40t@127.0.0.1:{server.port}/"
        result = await _http_probe(url, timeout_seconds=5)
    token = base64.b64encode(b"probe:s3cr@t").decode()
    assert f"authorization: basic {token}".lower() in server.requests[0].decode().lower()
    assert not result.ok and "HTTP 401" in result.detail
    assert "s3cr" not in result.detail and "probe:***@" in result.detail


async def test_https_against_a_plain_server_is_a_tls_failure() -> None:
    # Answered at once: a TLS hello holds no blank line to wait for.
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n"), read_request=False) as server:
        result = await _http_probe(f"https://127.0.0.1:{server.port}/", timeout_seconds=5)
    assert not result.ok and "TLS" in result.detail, result.detail


async def test_ipv6() -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(ok, "::1", 0)
    except OSError:
        pytest.skip("no ::1 on this machine")
    port = server.sockets[0].getsockname()[1]
    try:
        result = await _http_probe(f"http://[::1]:{port}/", timeout_seconds=5)
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result.detail
