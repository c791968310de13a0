"""The body of ``GET /metrics`` from the families' texts: plain or gzip (``Exposition``).

Prometheus asks for gzip. Compressing the ~1.9 MB exposition of 1000
collectors anew took ~10 ms a scrape, though most of it is the same text as
at the last scrape: only the uptime family always changes. So each family's
text is compressed once per content: a family whose text is equal to the
last scrape's reuses its compressed bytes.

A gzip body is one gzip member whose deflate stream is the families'
compressed texts one after the other. Each is compressed on its own (a fresh
compressor, so no back-reference reaches into another's text) and ends with
a sync flush (an empty stored block, byte-aligned), so they join into one
valid stream; an empty final block ends it. The trailer's CRC-32 is of the
whole text (~0.5 ms at 1.9 MB). Any gzip reader reads it as one member: no
multi-member tricks, which some clients mishandle.

Whether a family is unchanged is its ``revision`` where it has one (a
``WrittenFamily``: the blocks give a new one whenever its text changes), so
that neither side keeps that text between scrapes: the blocks keep each
collector's lines, and joined again, those were a second copy of 1.7 KiB per
collector. A text without a revision (a plain ``str``, any other family) is
kept and compared.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Protocol

COMPRESSION_LEVEL = 6
"""zlib's default."""
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Magic, deflate, no flags, no mtime, no extra flags, OS unknown (RFC 1952)."""
_FINAL_BLOCK = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
"""An empty final deflate block: the end of the stream."""


class Revised(Protocol):
    """A text whose ``revision`` changes whenever the text does (``WrittenFamily``)."""

    @property
    def revision(self) -> int: ...

    def text(self) -> str: ...


Piece = str | Revised
"""One family's text, or what writes it and tells whether it changed."""


def _text(piece: Piece) -> str:
    return piece if isinstance(piece, str) else piece.text()


class _Part:
    """One family as the last scrape had it, with its compressed bytes.

    Its text only where it has no revision to be told apart by; never its
    encoded bytes (a second copy, for a CRC computed again only when a part
    before it changed).
    """

    __slots__ = ("crc_through", "deflated", "revision", "size", "text")

    def __init__(self, piece: Piece) -> None:
        text = _text(piece)
        self.text = text if isinstance(piece, str) else None
        self.revision = None if isinstance(piece, str) else piece.revision
        self.size = len(text) if text.isascii() else len(text.encode())
        self.deflated = b""
        """Its text compressed (a sync-flushed deflate block, never empty); b"" until then."""
        self.crc_through: int | None = None
        """CRC-32 of the text of every part up to this one, when last computed."""

    def same(self, piece: Piece) -> bool:
        """Whether ``piece`` has this part's text."""
        if isinstance(piece, str):
            return self.text is piece or self.text == piece
        return piece.revision == self.revision

    def deflate(self, data: bytes) -> None:
        """Compress ``data``, this part's text encoded."""
        compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.deflated = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class Exposition:
    """Encodes a scrape's family texts, reusing what is unchanged since the last one."""

    def __init__(self) -> None:
        self._parts: list[_Part] = []
        self.reused = 0
        """Parts of the last body that were not encoded again (for benchmarks)."""

    def _update(self, pieces: Sequence[Piece]) -> list[_Part]:
        old, parts, reused = self._parts, [], 0
        for index, piece in enumerate(pieces):
            # Kept by position: the families come in the same order each scrape.
            part = old[index] if index < len(old) else None
            if part is not None and part.same(piece):
                reused += 1
            else:
                part = _Part(piece)
            parts.append(part)
        self._parts, self.reused = parts, reused
        return parts

    def plain(self, pieces: Sequence[Piece]) -> bytes:
        """The text exposition: the texts joined, as UTF-8."""
        self._update(pieces)
        return "".join([_text(piece) for piece in pieces]).encode()

    def gzip(self, pieces: Sequence[Piece]) -> bytes:
        """``plain(pieces)`` gzip-compressed (``Content-Encoding: gzip``)."""
        parts = self._update(pieces)
        crc, size, cached = 0, 0, True
        for part, piece in zip(parts, pieces, strict=True):
            # While every part so far has its CRC-through, so has this one, from the
            # same parts before it: a new part has none, and the parts after it
            # get theirs computed again, here, after it.
            # A part not yet compressed has no CRC-through either: encoded once, for both.
            if cached and part.crc_through is not None:
                crc = part.crc_through
            else:
                cached = False
                data = (part.text if part.text is not None else _text(piece)).encode()
                crc = part.crc_through = zlib.crc32(data, crc)
                if not part.deflated:
                    part.deflate(data)
            size += part.size
        return b"".join(
            [
                _HEADER,
                *[part.deflated for part in parts],
                _FINAL_BLOCK,
                struct.pack("<II", crc, size & 0xFFFFFFFF),
            ]
        )
