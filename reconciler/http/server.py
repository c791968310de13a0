"""``HttpServer``: HTTP/1.1 on asyncio streams, parsed by h11.

One task per connection, keep-alive, no pipelining beyond what h11 buffers. What the
parser refuses (a byte that is not HTTP, a line past ``max_line_bytes``, more than
``max_headers`` headers, a bad ``Content-Length`` or chunk) is answered by the owner's
``refusal`` (the control API answers in JSON) and logged in one line, not a traceback:
a malformed request is the client's mistake. A body is read only when the handler asks,
bounded by ``max_body_bytes``; one announced larger is refused before a byte of it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import h11

from reconciler import __version__
from reconciler.http.messages import (
    REASONS,
    Handler,
    HttpError,
    Request,
    Response,
    split_target,
)

IDLE_SECONDS = 75.0
"""A connection that sends nothing for this long is closed (between requests or inside one)."""
DRAIN_BYTES = 64 * 1024
"""A body the handler did not read is drained (to keep the connection) up to this size."""
_READ_BYTES = 65536
_SERVER = f"reconciler/{__version__}".encode()

Refusal = Callable[[int, str], Response]


class HttpServer:
    """Serve ``handler`` on listeners made by ``serve_unix`` and ``serve_tcp``.

    ``handler`` gets every well-formed request and answers it; an exception out of it
    is the owner's bug (the owner maps its own errors to answers), answered 500 by
    ``refusal``. ``close()`` stops listening, gives requests under way
    ``shutdown_seconds``, then cancels them and closes every connection.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        refusal: Refusal,
        log: logging.Logger,
        label: str,
        max_body_bytes: int = 1024 * 1024,
        max_line_bytes: int = 8190,
        max_headers: int = 128,
        idle_seconds: float = IDLE_SECONDS,
        shutdown_seconds: float = 2.0,
    ) -> None:
        self.handler = handler
        self.refusal = refusal
        self.log = log
        self.label = label
        self.max_body_bytes = max_body_bytes
        self.max_line_bytes = max_line_bytes
        self.max_headers = max_headers
        self.idle_seconds = idle_seconds
        self.shutdown_seconds = shutdown_seconds
        self._listeners: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()

    async def serve_unix(self, path: str) -> asyncio.Server:
        listener = await asyncio.start_unix_server(self._connection, path)
        self._listeners.append(listener)
        return listener

    async def serve_tcp(self, host: str | None, port: int) -> asyncio.Server:
        listener = await asyncio.start_server(self._connection, host, port)
        self._listeners.append(listener)
        return listener

    async def close(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        # Idle connections go now; requests under way get their grace.
        for task in self._connections - self._busy:
            task.cancel()
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=self.shutdown_seconds)
        for task in set(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        for listener in listeners:
            await listener.wait_closed()

    # -- one connection ---------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await _Exchange(self, reader, writer, task).run()
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the client went (or was too slow), or the server is closing
        except Exception:
            self.log.exception("%s: a connection failed", self.label)
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


class _Exchange:
    """The requests and answers of one connection, in turn."""

    def __init__(
        self,
        server: HttpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task = task
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_line_bytes * 8)
        self.peer = writer.get_extra_info("socket")
        self.hung_up = False
        self.announced: int | None = None
        """The Content-Length of the request under way."""
        self.chunked = False
        """Whether its body is chunked."""
        self.body: bytes | None = None
        """Its body, once read."""
        self.broken = False
        """The request under way cannot be read to its end: close after the answer."""

    async def run(self) -> None:
        server = self.server
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(400, f"malformed HTTP request: {_reason(exc)}")
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            head = dict(event.headers)
            self.chunked = b"chunked" in head.get(b"transfer-encoding", b"").lower()
            length = head.get(b"content-length")
            self.announced = int(length) if length is not None else None  # h11 checked it
            self.body, self.broken = None, False
            server._busy.add(self.task)
            try:
                response = await self._answer(event)
                if not await self._send(event, response):
                    return
            finally:
                server._busy.discard(self.task)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            async with asyncio.timeout(self.server.idle_seconds):
                data = await self.reader.read(_READ_BYTES)
            self.hung_up = not data
            self.conn.receive_data(data)

    async def _answer(self, event: h11.Request) -> Response:
        server = self.server
        problem = self._limits(event)
        if problem is not None:
            server.log.warning("%s: refused a malformed HTTP request: %s", server.label, problem)
            return server.refusal(400, f"malformed HTTP request: {problem}")
        request = self._request(event)
        try:
            return await server.handler(request)
        except HttpError as exc:
            response = server.refusal(exc.status, exc.message)
            response.headers.update(exc.headers)
            return response
        except Exception:
            server.log.exception("%s: %s %s failed", server.label, request.method, request.path)
            return server.refusal(500, "internal error; the reconciler's log has the details")

    def _limits(self, event: h11.Request) -> str | None:
        server = self.server
        longest = server.max_line_bytes
        if len(event.method) + len(event.target) + 10 > longest or any(
            len(name) + len(value) + 2 > longest for name, value in event.headers
        ):
            return f"request line or header longer than {longest} bytes"
        if len(event.headers) > server.max_headers:
            return f"more than {server.max_headers} headers"
        return None

    def _request(self, event: h11.Request) -> Request:
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        method = event.method.decode("ascii")
        target = event.target.decode("ascii")  # h11 admits visible ASCII only
        path, query = split_target(target)
        return Request(
            method=method,
            target=target,
            path=path,
            query=query,
            headers=headers,
            content_length=self.announced,
            chunked=self.chunked,
            peer=self.peer,
            _read=lambda: self._read_body(method=method, target=target),
        )

    async def _read_body(self, *, method: str, target: str) -> bytes:
        if self.body is None:
            self.body = await self._receive_body(method=method, target=target)
        return self.body

    async def _receive_body(self, *, method: str, target: str) -> bytes:
        limit = self.server.max_body_bytes
        if self.announced is not None and self.announced > limit:
            # Refused before a byte of it is read (or waited for).
            raise HttpError(413, f"body: {self.announced} bytes; at most {limit}")
        if self.conn.they_are_waiting_for_100_continue:
            informational = h11.InformationalResponse(status_code=100, headers=[])
            await self._write(self.conn.send(informational))
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = await self._next_event()
            except (h11.RemoteProtocolError, ConnectionError, TimeoutError) as exc:
                self.broken = True
                if isinstance(exc, TimeoutError):
                    idle = self.server.idle_seconds
                    raise HttpError(408, f"body: nothing came for {idle:g} s") from None
                if self.hung_up or isinstance(exc, ConnectionError):
                    # Nobody is left to answer: not the server's failure, so no traceback.
                    self.server.log.info(
                        "%s: %s %s: the client hung up mid-body", self.server.label, method, target
                    )
                    raise HttpError(400, "body: the client hung up before sending it all") from None
                assert isinstance(exc, h11.RemoteProtocolError)
                raise HttpError(400, f"body: malformed ({_reason(exc)})") from None
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            assert isinstance(event, h11.Data)
            size += len(event.data)
            if size > limit:
                self.broken = True
                raise HttpError(413, f"body: more than {limit} bytes; at most {limit}")
            chunks.append(bytes(event.data))

    async def _send(self, event: h11.Request, response: Response) -> bool:
        """Send ``response``; False when the connection is to be closed afterwards."""
        keep = await self._drain()
        await self._transmit(response, body=event.method != b"HEAD", close=not keep)
        return keep

    async def _transmit(self, response: Response, *, body: bool, close: bool) -> None:
        """Write ``response`` (its body unless answering HEAD); with ``close``, say so and
        linger until the client has read it."""
        headers = [(b"server", _SERVER), (b"content-length", b"%d" % len(response.body))]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        if close:
            headers.append((b"connection", b"close"))
        reason = REASONS.get(response.status, "").encode()
        data = self.conn.send(
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        )
        if body and response.body:
            data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        await self._write(data)
        if close:
            await self._linger()

    async def _drain(self) -> bool:
        """Read what is left of a body the handler did not read, if it is small; whether
        the connection can serve another request after this one."""
        conn = self.conn
        if conn.their_state is h11.DONE:
            return True
        if self.broken or conn.their_state is not h11.SEND_BODY:
            return False
        if conn.they_are_waiting_for_100_continue:
            return False  # the client sends no body unless told to
        length = self.announced if self.announced is not None else (None if self.chunked else 0)
        if length is None or length > DRAIN_BYTES:
            return False
        try:
            while not isinstance(await self._next_event(), h11.EndOfMessage):
                pass
        except (h11.RemoteProtocolError, ConnectionError, TimeoutError):
            return False
        return True

    async def _refuse(self, status: int, message: str) -> None:
        """Answer a request the parser refused (if an answer can still be sent)."""
        self.server.log.warning("%s: refused a %s", self.server.label, message)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self._transmit(self.server.refusal(status, message), body=True, close=True)

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _linger(self) -> None:
        """Half-close, then read (and drop) what the client still sends, briefly: closing
        with unread data could reset the connection before the client read the answer."""
        if self.hung_up or not self.writer.can_write_eof():
            return
        self.writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1.0):
                while await self.reader.read(_READ_BYTES):
                    pass


def _reason(exc: h11.RemoteProtocolError) -> str:
    """h11's message without the bytes it quotes (never echo 8 KiB back)."""
    text = str(exc) or "bad request"
    if "bytearray(" in text or "b'" in text or 'b"' in text:
        text = text.split(":", 1)[0]
    if "Receive buffer too long" in text:
        text = "request head too long"
    first = text.strip().splitlines()[0].rstrip(":")
    return first if len(first) <= 200 else first[:200] + "..."
