"""``reconciler.http`` over a real TCP socket, driven with raw bytes: keep-alive,
pipelining, HEAD, ``Expect: 100-continue``, bodies the handler does not read, slow and
vanishing clients, and the grace given to requests under way on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from reconciler.http import HttpServer, Request, Response, Router, text_response
from reconciler.http.messages import split_target
from tests.support import eventually

log = logging.getLogger("tests.http")


@dataclass
class Served:
    server: HttpServer
    port: int
    seen: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _refusal(status: int, message: str) -> Response:
    return text_response(f"refused: {message}", status=status)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    router = Router()
    state: dict[str, Served] = {}

    async def hello(request: Request) -> Response:
        state["s"].seen.append(request)
        return text_response(f"hello {request.query.get('who', 'you')}")

    async def echo(request: Request) -> Response:
        state["s"].seen.append(request)
        return Response(200, await request.read(), {"Content-Type": "application/octet-stream"})

    async def slow(request: Request) -> Response:
        state["s"].seen.append(request)
        await state["s"].release.wait()
        return text_response("done")

    async def ignore(request: Request) -> Response:
        state["s"].seen.append(request)
        return text_response("not read")

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    router.add("GET", "/hello", hello)
    router.add("POST", "/echo", echo)
    router.add("GET", "/slow", slow)
    router.add("POST", "/ignore", ignore)
    router.add("GET", "/broken", broken)

    async def handle(request: Request) -> Response:
        return await router.resolve(request)(request)

    server = HttpServer(
        handle,
        refusal=_refusal,
        log=log,
        label="test",
        max_body_bytes=1000,
        idle_seconds=0.5,
        shutdown_seconds=1.0,
    )
    listener = await server.serve_tcp("127.0.0.1", 0)
    state["s"] = Served(server, listener.sockets[0].getsockname()[1])
    try:
        yield state["s"]
    finally:
        state["s"].release.set()
        await server.close()


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def answer(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-case names) and body."""
    async with asyncio.timeout(5):
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = 0 if head else int(headers.get("content-length", "0"))
        body = await reader.readexactly(length)
    return int(lines[0].split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(5):
        return await reader.read(1) == b""


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra, "", ""]).encode()


async def test_two_requests_on_one_connection_and_pipelined(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/hello?who=a"))
        assert (await answer(reader))[2] == b"hello a"
        writer.write(get("/hello?who=b") + get("/hello?who=c&who=d"))
        assert (await answer(reader))[2] == b"hello b"
        status, headers, body = await answer(reader)
        assert (status, body) == (200, b"hello c"), "the first value of a repeated name"
        assert "connection" not in headers
    assert len(served.seen) == 3


async def test_connection_close_and_http_1_0_end_the_connection(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/hello", "Connection: close"))
        assert (await answer(reader))[0] == 200
        assert await closed(reader)
    async with connection(served.port) as (reader, writer):
        writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
        assert (await answer(reader))[2] == b"hello you"
        assert await closed(reader)


async def test_head_has_the_length_but_no_body(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/hello").replace(b"GET", b"HEAD", 1) + get("/hello"))
        status, headers, _ = await answer(reader, head=True)
        assert (status, headers["content-length"]) == (200, str(len(b"hello you")))
        assert (await answer(reader))[2] == b"hello you", "no body came between the two"


async def test_unknown_path_and_method_are_refused(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/nothing") + b"DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = await answer(reader)
        assert (status, body) == (404, b"refused: GET /nothing: Not Found")
        status, headers, _ = await answer(reader)
        assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_a_handler_bug_is_a_500_with_the_traceback_only_in_the_log(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/broken") + get("/hello"))
        status, _, body = await answer(reader)
        assert status == 500 and b"a bug" not in body
        assert (await answer(reader))[0] == 200, "the connection still serves"
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_body_is_read_whole_in_both_framings(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        assert (await answer(reader))[2] == b"hello"
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await answer(reader))[2] == b"abcde"


async def test_expect_100_continue_is_told_to_go_on(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _ = await answer(reader)
        assert status == 100
        writer.write(b"abc")
        assert (await answer(reader))[2] == b"abc"


async def test_a_body_past_the_limit_is_413_and_one_announced_so_is_never_waited_for(
    served: Served,
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        status, headers, body = await answer(reader)
        assert (status, headers["connection"]) == (413, "close")
        assert b"1001 bytes; at most 1000" in body
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (1001, b"x" * 1001))
        status, _, body = await answer(reader)
        assert status == 413 and b"more than 1000 bytes" in body


async def test_a_small_unread_body_is_drained_and_the_connection_kept(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nskip")
        status, headers, _ = await answer(reader)
        assert status == 200 and "connection" not in headers
        writer.write(get("/hello"))
        assert (await answer(reader))[2] == b"hello you", "the body was not taken as a request"


async def test_an_unread_chunked_body_closes_the_connection(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, headers, _ = await answer(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await closed(reader)


async def test_an_idle_connection_is_closed_after_idle_seconds(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/hello"))
        await answer(reader)
        assert await closed(reader), "closed by the server after 0.5 s of nothing"


async def test_a_body_that_stops_coming_is_408_without_a_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        status, headers, body = await answer(reader)
        assert (status, headers["connection"]) == (408, "close")
        assert b"nothing came for 0.5 s" in body
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_client_that_vanishes_mid_body_is_one_info_line(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.http")
    async with connection(served.port) as (_, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
    await eventually(
        lambda: any("hung up mid-body" in r.getMessage() for r in caplog.records),
        message="the hang-up is logged",
    )
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_close_lets_a_request_under_way_finish_and_drops_idle_ones(served: Served) -> None:
    async with (
        connection(served.port) as (reader, writer),
        connection(served.port) as (idle_reader, idle_writer),
    ):
        idle_writer.write(get("/hello"))
        await answer(idle_reader)
        writer.write(get("/slow"))
        await eventually(lambda: any(r.path == "/slow" for r in served.seen))
        closing = asyncio.create_task(served.server.close())
        assert await closed(idle_reader), "an idle connection goes at once"
        assert not closing.done()
        served.release.set()
        assert (await answer(reader))[2] == b"done", "the request under way was answered"
        async with asyncio.timeout(5):
            await closing


async def test_close_cancels_a_request_past_the_grace(served: Served) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(get("/slow"))
        await eventually(lambda: any(r.path == "/slow" for r in served.seen))
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            await served.server.close()
        assert 0.9 <= loop.time() - started < 4, "shutdown_seconds of grace, then no more"
        assert await closed(reader)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/a/b", "/a/b", {}),
        ("/a/./b", "/a/b", {}),
        ("/a/../b", "/b", {}),
        ("/a/b/..", "/a/", {}),
        ("/../../etc/passwd", "/etc/passwd", {}),
        ("/a/%2e%2e/b", "/b", {}),
        ("/a/%2E/b", "/a/b", {}),
        ("/a/%7euser", "/a/~user", {}),
        ("/a/..%2Fb", "/a/..%2Fb", {}),
        ("/a/%2F", "/a/%2F", {}),
        ("/a/%zz%", "/a/%zz%", {}),
        ("/a?x=1&y=&x=2", "/a", {"x": "1", "y": ""}),
        ("/a?q=%20b+c", "/a", {"q": " b c"}),
    ],
)
def test_split_target_normalises_the_path_as_rfc_3986_does(
    target: str, path: str, query: dict[str, str]
) -> None:
    assert split_target(target) == (path, query)
