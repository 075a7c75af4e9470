"""Reading one HTTP/1.x reply of the guard from the bytes a connection receives, against a cap.

What the reader accepts (``ReplyReader``): HTTP/1.1 and 1.0 replies, bodies framed by Content-Length,
chunked (extensions and trailers skipped) or running until the connection closes, gzip or deflate
content encoding (inflated against the cap, so a small compressed reply cannot grow past it), 1xx
interim replies skipped. Anything else (a malformed head or framing, a head over ``MAX_HEAD_BYTES``, an
unknown encoding) is a ``ReplyError``; a connection that closes before its reply is whole is a
``ConnectionResetError``. The reader also tells whether the connection may carry another exchange.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024  # status line and headers (and trailers) of one reply
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"


class ReplyError(Exception):
    """The guard's bytes are not an HTTP reply guardq can read."""


class ReplyHeaders(Mapping[str, str]):
    """A reply's headers, looked up by name in any case; a repeated header's values joined by ", "."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # names lower-cased

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its status, headers, body (at most the cap) and whether the body is whole."""

    status: int
    headers: ReplyHeaders
    body: bytes
    whole: bool


class _Framing(Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def _parse_head(head: bytes) -> tuple[int, bool, ReplyHeaders]:
    """(status, whether HTTP/1.1, headers) of a reply head (without its blank line)."""
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not (code.isdigit() and len(code) == 3):
        raise ReplyError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    if len(rest) > 3 and rest[3:4] != b" ":
        raise ReplyError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.strip(b" \t") != name:
            raise ReplyError(f"malformed header line: {line[:60]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return int(code), version == b"HTTP/1.1", ReplyHeaders(fields)


def _content_length(value: str) -> int:
    """A Content-Length (a list of one repeated value is accepted, as RFC 9110 allows)."""
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1:
        raise ReplyError(f"conflicting Content-Length: {value[:60]!r}")
    (digits,) = values
    if not digits.isdigit() or not digits.isascii():
        raise ReplyError(f"malformed Content-Length: {value[:60]!r}")
    return int(digits)


def _decoder(encoding: str) -> zlib._Decompress | None:
    coding = encoding.strip().lower()
    if coding in {"", "identity"}:
        return None
    if coding in {"gzip", "x-gzip", "deflate"}:
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by itself
    raise ReplyError(f"unsupported Content-Encoding: {encoding[:40]!r}")


class ReplyReader:
    """Reads one reply from the bytes fed to it, keeping at most ``cap`` bytes of its (inflated) body."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buffer = bytearray()
        self._status = 0
        self._headers = ReplyHeaders({})
        self._framing: _Framing | None = None  # None while the head is being read
        self._remaining = 0  # LENGTH: body bytes to come; CHUNKED: bytes of the current chunk to come
        self._chunk_state = "size"  # CHUNKED: size, data, data-end, trailer
        self._decoder: zlib._Decompress | None = None
        self._body = bytearray()
        self._whole = True
        self.reusable = False  # known once the reply is done

    def feed(self, data: bytes) -> Reply | None:
        """Take more bytes; the reply once it is done (whole, or cut at the cap), else None."""
        self._buffer += data
        if self._framing is None and not self._read_head():
            return None
        return self._read_body()

    def end(self) -> Reply:
        """The connection closed: the reply, when its body runs until the close; else ConnectionResetError."""
        if self._framing is _Framing.UNTIL_CLOSE:
            self._finish()
            return self._reply()
        if self._framing is None and not self._buffer:
            raise ConnectionResetError("the guard closed the connection without replying")
        raise ConnectionResetError("the guard closed the connection before its reply was whole")

    # -- head ---------------------------------------------------------------------------------------

    def _read_head(self) -> bool:
        """Read the head (skipping 1xx interim replies); False while it is incomplete."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ReplyError(f"reply head longer than {MAX_HEAD_BYTES} bytes")
                return False
            if end > MAX_HEAD_BYTES:
                raise ReplyError(f"reply head longer than {MAX_HEAD_BYTES} bytes")
            status, http11, headers = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if status == 101:
                raise ReplyError("the guard switched protocols")
            if 100 <= status < 200:
                continue  # an interim reply (100 Continue, 103 Early Hints): the real one follows
            self._start_body(status, http11, headers)
            return True

    def _start_body(self, status: int, http11: bool, headers: ReplyHeaders) -> None:
        self._status, self._headers = status, headers
        keep_alive = http11 and "close" not in headers.get("connection", "").lower()
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in {204, 304}:
            self._framing = _Framing.NONE
        elif coding is not None:
            chunked = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
            self._framing = _Framing.CHUNKED if chunked else _Framing.UNTIL_CLOSE
            keep_alive = keep_alive and chunked and length is None
        elif length is not None:
            self._framing = _Framing.LENGTH
            self._remaining = _content_length(length)
            if self._remaining > self._cap:  # declared too large: not read at all
                self._framing = _Framing.NONE
                self._whole = keep_alive = False
        else:
            self._framing = _Framing.UNTIL_CLOSE
        self.reusable = keep_alive and self._framing is not _Framing.UNTIL_CLOSE
        if self._framing is not _Framing.NONE:
            self._decoder = _decoder(headers.get("content-encoding", ""))

    # -- body ---------------------------------------------------------------------------------------

    def _read_body(self) -> Reply | None:
        framing = self._framing
        if framing is _Framing.LENGTH:
            taken = self._buffer[: self._remaining]
            del self._buffer[: self._remaining]
            self._remaining -= len(taken)
            self._keep(taken)
            done = self._remaining == 0
        elif framing is _Framing.CHUNKED:
            done = self._read_chunks()
        elif framing is _Framing.UNTIL_CLOSE:
            self._keep(self._buffer)
            self._buffer = bytearray()
            done = False
        else:
            done = True
        if not self._whole:  # cut at the cap: the rest is never read
            self.reusable = False
            return self._reply()
        if not done:
            return None
        self._finish()
        if self._buffer:  # more than the reply framed: the stream cannot be trusted for another
            self.reusable = False
        return self._reply()

    def _read_chunks(self) -> bool:
        """Consume chunked framing from the buffer; True once the last chunk and its trailers are read."""
        buffer = self._buffer
        while self._whole:
            if self._chunk_state == "data":
                taken = buffer[: self._remaining]
                del buffer[: self._remaining]
                self._remaining -= len(taken)
                self._keep(taken)
                if self._remaining:
                    return False
                self._chunk_state = "data-end"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ReplyError("chunk framing line too long")
                return False
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if self._chunk_state == "data-end":
                if line:
                    raise ReplyError("chunk data longer than its declared size")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or size.strip(_HEX_DIGITS) or len(size) > 16:
                    raise ReplyError(f"malformed chunk size: {line[:40]!r}")
                self._remaining = int(size, 16)
                self._chunk_state = "data" if self._remaining else "trailer"
            elif not line:  # the blank line after the trailers: the reply is done
                return True
        return False

    def _keep(self, raw: bytes | bytearray) -> None:
        """Add body bytes (inflated when encoded), up to the cap; past it, the reply is not whole."""
        if not raw:
            return
        room = self._cap - len(self._body)
        if self._decoder is not None:
            try:
                raw = self._decoder.decompress(raw, room + 1)
            except zlib.error as exc:
                raise ReplyError(f"the reply's compressed body is corrupt: {exc}") from None
            if self._decoder.unconsumed_tail:
                self._whole = False
        if len(raw) > room:
            raw = raw[:room]
            self._whole = False
        self._body += raw

    def _finish(self) -> None:
        if self._decoder is not None and self._whole:
            try:
                self._keep(self._decoder.flush())
            except zlib.error as exc:
                raise ReplyError(f"the reply's compressed body is corrupt: {exc}") from None

    def _reply(self) -> Reply:
        return Reply(self._status, self._headers, bytes(self._body), self._whole)
