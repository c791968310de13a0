"""TLS for the https probe, over a plain asyncio connection: ``ssl.SSLObject`` on memory BIOs.

Not asyncio's TLS transport: that one needs ``ssl`` imported with asyncio, and
``reconciler run`` imports asyncio without it (``reconciler.imports``), so that a daemon
with no https probe never loads ssl and OpenSSL (5 MiB of its memory). This module is
what loads them, when the first https probe runs; the rest of the daemon imports it only
then. The handshake, certificate checks and errors are OpenSSL's own, through ``ssl``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

READ_BYTES = 16384

_CONTEXT: ssl.SSLContext | None = None
"""One verifying client context, made at the first https probe (loading the CA store costs)."""

_T = TypeVar("_T")


def context() -> ssl.SSLContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.create_default_context()
    return _CONTEXT


def failure(exc: BaseException) -> str | None:
    """What TLS said went wrong, or None when ``exc`` is not a TLS error."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"  # "self-signed certificate"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc)  # "WRONG_VERSION_NUMBER"
    return None


class Connection:
    """A TLS client on an open connection: ``handshake()`` first, then ``send``/``receive``.

    Raises ``ssl.SSLError`` where TLS fails; the connection's own errors (``OSError``) pass
    through. Closing the connection stays with its owner, after ``close_notify()``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context().wrap_bio(self._incoming, self._outgoing, server_hostname=host)

    async def handshake(self) -> None:
        await self._run(self._tls.do_handshake)

    async def send(self, data: bytes) -> None:
        await self._run(lambda: self._tls.write(data))

    async def receive(self) -> bytes:
        """The next bytes the server sent; ``b""`` once it has closed, with a close_notify or
        without one (many servers close with none after their answer)."""
        try:
            return await self._run(lambda: self._tls.read(READ_BYTES))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def close_notify(self) -> None:
        """Queue TLS's close_notify on the connection; the server's answer is not awaited."""
        try:
            self._tls.unwrap()
        except ssl.SSLError:  # SSLWantReadError: ours is sent, theirs not read; or a broken one
            pass
        pending = self._outgoing.read()
        if pending and not self._writer.is_closing():
            self._writer.write(pending)

    async def _run(self, step: Callable[[], _T]) -> _T:
        """Call ``step`` until OpenSSL has the bytes it needs, sending what it wrote."""
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._reader.read(READ_BYTES)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
            else:
                await self._flush()
                return result

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._writer.write(pending)
            await self._writer.drain()
