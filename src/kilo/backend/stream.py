"""The bytes of a watch stream, read with as little work per event as the transport allows.

A watch is one long HTTP/1.1 response in chunked transfer encoding; the API server flushes one
chunk per event, and at 1,000 nodes in Kilo's liveness mode 33 of them arrive every second.
Read through urllib3's ``read1`` each chunk costs a stack of Python calls (urllib3's decoder
checks, http.client's chunk-size line and chunk bookkeeping), several times the cost of
recognising the event itself. ``body_reads`` reads the connection's buffered socket file
instead, in reads of up to 64 KiB (each returns what has arrived: one TLS record or more), and
``dechunk`` takes the chunk framing off in bulk. The response is the urllib3 one the
kubernetes client's transport made; when it is not the shape this expects (no socket file, a
chunk already half read, a content encoding), urllib3's ``read1`` is used as before.

``dechunk`` is pure: malformed framing (a size that is not hexadecimal, a chunk not followed
by CRLF, a size line longer than 4 KiB) ends the stream with ``StreamError``, a body broken off
before its last chunk with urllib3's ``ProtocolError`` (what urllib3's reader raises), and the
watch is made again; it never yields bytes of the framing.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from urllib3.exceptions import ProtocolError

#: Bytes asked of the stream at once: whatever has arrived, up to this.
READ_SIZE = 1 << 16
_MAX_SIZE_LINE = 4096
_HEX = frozenset(b"0123456789abcdefABCDEF")


class StreamError(ValueError):
    """The chunked framing of a response body is broken."""


def body_reads(
    resp: Any,
    size: int = READ_SIZE,
    pause: float = 0.0,
    wait: Callable[[float], object] = time.sleep,
) -> Iterator[bytes]:
    """The body of ``resp`` (a urllib3 response made with ``preload_content=False``) as it
    arrives, its chunked framing removed; content encodings are urllib3's to undo.

    ``pause``: after each piece handed on, ``wait(pause)`` before reading again, and then take
    everything that arrived meanwhile at once, with the socket in non-blocking mode: a TLS
    record that has only partly arrived (or one that is no data, a key update) is left to the
    next blocking read and never holds back what was read before it. The first bytes after a
    quiet spell are handed on as soon as they arrive; a steady stream (Kilo's check-ins: 33
    events a second at 1,000 nodes) wakes the reader once a pause instead of once an event.
    Pacing needs a socket of the standard library's under the response (else no pause)."""
    raw = _socket_file(resp)
    if raw is None:
        return iter(lambda: resp.read1(size), b"")
    sock = _socket(resp)
    if pause <= 0 or sock is None:
        return dechunk(iter(lambda: raw(size), b""))
    return dechunk(_paced(raw, sock, size, pause, wait))


def _paced(
    read1: Callable[[int], bytes],
    sock: socket.socket,
    size: int,
    pause: float,
    wait: Callable[[float], object],
) -> Iterator[bytes]:
    while data := read1(size):  # blocks until something arrives
        parts = [data]
        broken: OSError | None = None
        timeout = sock.gettimeout()
        sock.settimeout(0)  # what has arrived, without waiting
        try:
            while data := read1(size):  # b"": nothing more now (or the end)
                parts.append(data)
        except _WOULD_BLOCK:
            pass  # no whole TLS record more (part of one, or one that is not data)
        except OSError as err:
            broken = err
        finally:
            sock.settimeout(timeout)
        yield b"".join(parts)  # what was read is handed on before an error
        if broken is not None:
            raise broken
        wait(pause)


#: A read of a socket in non-blocking mode with nothing to return (plain: ``read1`` gives b"").
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)


def _socket(resp: Any) -> socket.socket | None:
    """The socket under ``resp``'s socket file (None if it is not there or not a socket of the
    standard library's, whose non-blocking reads ``_paced`` knows)."""
    sock = getattr(
        getattr(getattr(getattr(resp, "_fp", None), "fp", None), "raw", None), "_sock", None
    )
    return sock if isinstance(sock, socket.socket) else None


def _socket_file(resp: Any) -> Callable[[int], bytes] | None:
    """``read1`` of the buffered socket file under ``resp`` when the body is chunked, nothing
    of it has been read and no content encoding applies; else None."""
    fp = getattr(resp, "_fp", None)  # http.client.HTTPResponse
    sock_file = getattr(fp, "fp", None)
    read1 = getattr(sock_file, "read1", None)
    headers = getattr(resp, "headers", None)
    if (
        read1 is None
        or getattr(fp, "chunked", False) is not True
        or getattr(fp, "chunk_left", 0) is not None
        or getattr(resp, "_has_decoded_content", True) is not False
        or getattr(resp, "_uncached_read_occurred", True) is not False
        or headers is None
        or headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    ):
        return None
    return read1  # type: ignore[no-any-return]


def dechunk(reads: Iterable[bytes]) -> Iterator[bytes]:
    """The payload of a body in chunked transfer encoding, from the pieces it arrives in; ends
    at the last chunk (size 0; trailers are not read). Reads that end before it (the connection
    broken off) raise urllib3's ``ProtocolError`` once what arrived of the chunk is handed on,
    as urllib3's own reader does: the watch is made again after a pause, a line cut short is
    never handed on as if whole."""
    buf = b""
    need = -1  # bytes of the current chunk still to come; -1: a size line is next
    for piece in reads:
        buf = buf + piece if buf else piece
        at = 0
        while True:
            if need < 0:
                end = buf.find(b"\r\n", at, at + _MAX_SIZE_LINE + 2)
                if end < 0:
                    if len(buf) - at > _MAX_SIZE_LINE:
                        raise StreamError("a chunk size line of more than 4 KiB")
                    break
                need = _size(buf[at:end])
                at = end + 2
                if need == 0:
                    return
            if len(buf) - at < need + 2:
                if need and len(buf) > at:  # hand on what there is of the chunk
                    part = buf[at : at + need]
                    need -= len(part)
                    at += len(part)
                    yield part
                break
            if buf[at + need : at + need + 2] != b"\r\n":
                raise StreamError("a chunk not followed by CRLF")
            if need:
                yield buf[at : at + need]
            at += need + 2
            need = -1
        buf = buf[at:]
    raise ProtocolError("Connection broken: the body ended before its last chunk")


def _size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
        raise StreamError(f"a chunk size that is not hexadecimal: {line[:40]!r}")
    return int(digits, 16)
