"""The HTTP probe against real servers that answer raw bytes: what passes, what fails and
says why, that it follows no redirect, reads no more than the answer's head and always
hangs up, and that a password in the URL is sent but never shown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from reconciler import __version__
from reconciler.process.driver import ProbeResult
from reconciler.process.health import _http_probe, _os_reason
from tests.support import make_certificates, tls_server_context

pytestmark = pytest.mark.timeout(30)

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """What a test server saw: each request's head, and its connections coming and going."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.received = asyncio.Event()
        self.closed = asyncio.Event()
        self.port = 0

    def headers(self, index: int = 0) -> dict[str, str]:
        """The request's headers, by lower-case name."""
        lines = self.requests[index].decode().split("\r\n")[1:]
        pairs = (line.split(":", 1) for line in lines if line)
        return {name.strip().lower(): value.strip() for name, value in pairs}


@contextlib.asynccontextmanager
async def serving(
    reply: Reply,
    *,
    read_request: bool = True,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:
    """A server on a free port that reads a request's head, then lets ``reply`` answer.

    On leaving, the listener is closed and every connection handler awaited (after 5 s, its
    connection dropped and the handler cancelled): nothing outlives the test.
    """
    server = Server()
    handlers: dict[asyncio.Task[object], asyncio.StreamWriter] = {}

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        server.connections += 1
        try:
            if read_request:
                server.requests.append(await reader.readuntil(b"\r\n\r\n"))
                server.received.set()
            await reply(reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the probe hung up first, as it may
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            server.closed.set()

    listener = await asyncio.start_server(connected, host, 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5)
            for task in pending:
                handlers[task].transport.abort()
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def answering(head: bytes) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)

    return reply


async def never_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the probe hangs up


async def endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:  # until a write or drain fails: the probe hung up
        writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        await writer.drain()
        # A yield, not a wait: a TLS drain whose socket is gone neither fails nor yields
        # until the loss is delivered, which needs the loop to run (asyncio 3.11).
        await asyncio.sleep(0)


def unused_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port: int = unused.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("head", "passed", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True, "HTTP 200"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", False, "HTTP 503"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False, "HTTP 404"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", True, "HTTP 204"),
        (b"HTTP/1.0 200 OK\r\n\r\n", True, "HTTP 200"),
        (b"NOT HTTP\r\n\r\n", False, "not an HTTP answer"),
        (b"HTTP/1.1 abc Bad\r\n\r\n", False, "not an HTTP answer"),
        (b"", False, "not an HTTP answer"),
    ],
)
async def test_the_status_decides(head: bytes, passed: bool, said: str) -> None:
    async with serving(answering(head)) as server:
        url = f"http://127.0.0.1:{server.port}/healthz?deep=1"
        result = await _http_probe(url, timeout_seconds=5)
    assert (result.ok, said in result.detail) == (passed, True), result.detail
    assert result.detail.startswith(f"GET {url}: ")
    assert "\n" not in result.detail


async def test_the_request_is_one_plain_get() -> None:
    async with serving(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
        url = f"http://127.0.0.1:{server.port}/a b/\u00e9t\u00e9?q=1 2&r=%2F#fragment"
        result = await _http_probe(url, timeout_seconds=5)
    assert result.ok, result.detail
    assert server.requests[0].startswith(b"GET /a%20b/%C3%A9t%C3%A9?q=1%202&r=%2F HTTP/1.1\r\n")
    assert server.headers() == {
        "host": f"127.0.0.1:{server.port}",
        "user-agent": f"reconciler/{__version__}",
        "accept": "*/*",
        "connection": "close",
    }


async def test_an_empty_path_asks_for_the_root() -> None:
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n")) as server:
        result = await _http_probe(f"http://127.0.0.1:{server.port}", timeout_seconds=5)
    assert result.ok, result.detail
    assert server.requests[0].startswith(b"GET / HTTP/1.1\r\n")


async def test_a_redirect_passes_and_is_not_followed() -> None:
    async with (
        serving(answering(b"HTTP/1.1 200 OK\r\n\r\n")) as elsewhere,
        serving(
            answering(
                f"HTTP/1.1 301 Moved Permanently\r\n"
                f"Location: http://127.0.0.1:{elsewhere.port}/moved\r\n"
                f"Content-Length: 0\r\n\r\n".encode()
            )
        ) as server,
    ):
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=5)
    assert result.ok and result.detail.endswith(": HTTP 301"), result.detail
    assert (server.connections, elsewhere.connections) == (1, 0)


async def test_an_endless_body_is_not_read() -> None:
    async with serving(endless_body) as server:
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=5)
        assert result.ok, result.detail  # not "timed out": the body was left unread
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_an_endless_head_is_refused_at_h11s_limit() -> None:
    async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X-Filler: " + b"x" * 1000 + b"\r\n")
            await writer.drain()

    async with serving(endless_head) as server:
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=5)
        assert not result.ok and "not an HTTP answer" in result.detail, result.detail
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_a_server_that_never_answers_times_out_and_is_hung_up_on() -> None:
    async with serving(never_answering) as server:
        started = time.monotonic()
        result = await _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=0.3)
        elapsed = time.monotonic() - started
        assert not result.ok
        assert result.detail == f"GET http://127.0.0.1:{server.port}/: timed out after 0.3 s"
        assert 0.25 < elapsed < 3, elapsed
        async with asyncio.timeout(5):
            await server.closed.wait()


async def test_a_cancelled_probe_closes_its_connection() -> None:
    async with serving(never_answering) as server:
        probe = asyncio.create_task(
            _http_probe(f"http://127.0.0.1:{server.port}/", timeout_seconds=30)
        )
        async with asyncio.timeout(5):
            await server.received.wait()
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await probe
        assert probe.cancelled()
        async with asyncio.timeout(5):
            await server.closed.wait()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_refused_connection_says_so(host: str) -> None:
    url = f"http://{host}:{unused_port()}/"
    result = await _http_probe(url, timeout_seconds=5)
    # localhost may be ::1 too: each address's reason once, "Connection refused" among them.
    assert not result.ok and result.detail.startswith(f"GET {url}: "), result.detail
    assert os.strerror(errno.ECONNREFUSED) in result.detail and "Errno" not in result.detail


def test_every_address_refusing_is_said_once() -> None:
    # asyncio's words when a name has several addresses (::1 and 127.0.0.1) and all fail.
    both = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 8080, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 8080)"
    )
    assert _os_reason(both) == os.strerror(111)
    mixed = OSError(
        "Multiple exceptions: [Errno 101] Connect call failed ('::1', 8080, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 8080)"
    )
    assert _os_reason(mixed) == f"{os.strerror(101)}; {os.strerror(111)}"


async def test_an_unknown_host_says_so() -> None:
    result = await _http_probe("http://no-such-host.invalid/", timeout_seconds=5)
    assert not result.ok and result.detail.startswith("GET http://no-such-host.invalid/: ")
    assert "Traceback" not in result.detail and "Errno" not in result.detail, result.detail


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://", "no host"),
        ("http://:8080/", "no host"),
        ("http://127.0.0.1:99999/", "Port out of range"),
        ("http://127.0.0.1:http/", "Port could not be cast"),
        ("http://[::1/", "Invalid IPv6 URL"),
        ("http://probe:s3cret@[::1/", "Invalid IPv6 URL"),
        ("http://" + "a" * 64 + ".example/", "label"),
        ("http://a\x00b/", "not a URL to request"),
    ],
)
async def test_a_url_that_cannot_be_requested_fails_without_raising(url: str, said: str) -> None:
    result = await _http_probe(url, timeout_seconds=5)
    assert not result.ok and said in result.detail, result.detail
    assert result.detail.startswith("GET http://") and "s3cret" not in result.detail


async def test_credentials_are_sent_and_the_password_never_shown() -> None:
    async with serving(answering(b"HTTP/1.1 401 Unauthorized\r\n\r\n")) as server:
        url = f"http://probe:s3cr%40t@127.0.0.1:{server.port}/"
        result = await _http_probe(url, timeout_seconds=5)
    token = base64.b64encode(b"probe:s3cr@t").decode()
    assert server.headers()["authorization"] == f"Basic {token}"
    assert server.headers()["host"] == f"127.0.0.1:{server.port}"  # no user part
    assert result == ProbeResult(False, f"GET http://probe:***@127.0.0.1:{server.port}/: HTTP 401")


@pytest.mark.parametrize("fault", ["refused", "timeout", "garbage"])
async def test_no_failure_shows_the_password(fault: str) -> None:
    reply = never_answering if fault == "timeout" else answering(b"NOT HTTP\r\n\r\n")
    async with serving(reply) as server:
        port = unused_port() if fault == "refused" else server.port
        result = await _http_probe(f"http://probe:s3cret@127.0.0.1:{port}/", timeout_seconds=0.3)
    assert not result.ok and "s3cret" not in result.detail, result.detail
    assert result.detail.startswith(f"GET http://probe:***@127.0.0.1:{port}/: "), result.detail


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
async def test_ipv6() -> None:
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n"), host="::1") as server:
        result = await _http_probe(f"http://[::1]:{server.port}/", timeout_seconds=5)
    assert result == ProbeResult(True, f"GET http://[::1]:{server.port}/: HTTP 200")
    assert server.headers()["host"] == f"[::1]:{server.port}"


# -- https -----------------------------------------------------------------------------------


async def test_https_against_a_plain_server_is_a_tls_failure() -> None:
    # Answered at once: a TLS hello holds no blank line to wait for.
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n"), read_request=False) as server:
        url = f"https://127.0.0.1:{server.port}/"
        result = await _http_probe(url, timeout_seconds=5)
    assert not result.ok and result.detail.startswith(f"GET {url}: TLS: "), result.detail


async def test_https_to_a_server_that_never_shakes_hands_times_out() -> None:
    async with serving(never_answering, read_request=False) as server:
        url = f"https://127.0.0.1:{server.port}/"
        result = await _http_probe(url, timeout_seconds=0.3)
        assert result == ProbeResult(False, f"GET {url}: timed out after 0.3 s")
        async with asyncio.timeout(5):
            await server.closed.wait()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("tls"))


async def test_https_with_an_untrusted_certificate_fails_verification(certificates: Path) -> None:
    tls = tls_server_context(certificates)
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n"), tls=tls) as server:
        url = f"https://127.0.0.1:{server.port}/"
        result = await _http_probe(url, timeout_seconds=5)
    assert not result.ok, result.detail
    assert result.detail.startswith(f"GET {url}: TLS: certificate verify failed: "), result.detail
    assert server.requests == []


_TRUSTING_PROBES = """
import asyncio, json, sys, time
from reconciler.process import health

def context():
    tls = sys.modules.get("reconciler.process.tls")
    return None if tls is None else tls._CONTEXT

async def main() -> None:
    made_early = context() is not None
    await health._http_probe(sys.argv[1], timeout_seconds=5)  # plain http: no TLS context yet
    made_for_http = context() is not None
    results, contexts = [], set()
    for url in sys.argv[2:]:
        started = time.monotonic()
        result = await health._http_probe(url, timeout_seconds=5)
        results.append([result.ok, result.detail, time.monotonic() - started])
        contexts.add(id(context()))
    print(json.dumps({"made_early": made_early, "made_for_http": made_for_http,
                      "contexts": len(contexts), "results": results,
                      "aiohttp": "aiohttp" in sys.modules}))

asyncio.run(main())
"""


async def test_https_with_a_trusted_certificate(certificates: Path) -> None:
    """In a child that trusts the test CA (``SSL_CERT_FILE``, read when the probe makes its
    one TLS context): a pass, a name the certificate does not hold, an endless body, and a
    server that never answers the TLS close: a status read in time stands, promptly."""
    tls = tls_server_context(certificates)
    release = asyncio.Event()

    async def deaf_after_answering(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the probe's close_notify goes unanswered
        await release.wait()
        transport.resume_reading()  # to see the hang-up, and close in turn

    async with (
        serving(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), tls=tls) as ok,
        serving(endless_body, tls=tls) as endless,
        serving(deaf_after_answering, tls=tls) as deaf,
    ):
        urls = [
            f"http://127.0.0.1:{unused_port()}/",
            f"https://probe:s3cret@127.0.0.1:{ok.port}/healthz",
            f"https://localhost:{ok.port}/",  # the certificate names 127.0.0.1 only
            f"https://127.0.0.1:{endless.port}/",
            f"https://127.0.0.1:{deaf.port}/",
        ]
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _TRUSTING_PROBES,
            *urls,
            env={**os.environ, "SSL_CERT_FILE": str(certificates / "ca.pem")},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(20):
                out, err = await child.communicate()
        finally:
            release.set()
            if child.returncode is None:
                child.kill()
                await child.wait()
        assert child.returncode == 0, err.decode()
        async with asyncio.timeout(5):
            await endless.closed.wait()
    assert err == b"", err.decode()
    seen = json.loads(out)
    assert (seen["made_early"], seen["made_for_http"], seen["contexts"]) == (False, False, 1)
    assert not seen["aiohttp"]
    passed, named, streamed, unanswered = seen["results"]
    assert passed[:2] == [True, f"GET https://probe:***@127.0.0.1:{ok.port}/healthz: HTTP 200"]
    assert ok.headers()["authorization"] == "Basic " + base64.b64encode(b"probe:s3cret").decode()
    assert ok.headers()["host"] == f"127.0.0.1:{ok.port}"
    assert not named[0] and "certificate verify failed" in named[1], named
    assert "Hostname mismatch" in named[1] or "localhost" in named[1], named
    assert streamed[0] and streamed[2] < 4, streamed  # the head read, the stream dropped
    # The probe sends its close_notify and does not wait for the server's (asyncio would, 30 s).
    assert unanswered[0] and unanswered[2] < 4, unanswered
