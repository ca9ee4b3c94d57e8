"""The watch stream's bytes (kilo.backend.stream): the chunked framing taken off in bulk gives
exactly the body, however the bytes arrive; broken framing ends the stream with StreamError and
nothing else; a real urllib3 response (over a socket, from a server on 127.0.0.1 in this
process) is read through its socket file, anything else through ``read1``."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.backend import stream
from kilo.backend.kubernetes import split_lines
from kilo.backend.stream import StreamError, body_reads, dechunk


def chunked(parts: list[bytes], ext: bool = False) -> bytes:
    out = b""
    for p in parts:
        size = f"{len(p):x}".encode() + (b";name=value" if ext else b"")
        out += size + b"\r\n" + p + b"\r\n"
    return out + b"0\r\n\r\n"


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        yield data[at:c]
        at = c
    yield data[at:]


PARTS = st.lists(st.binary(min_size=1, max_size=300), max_size=8)


@settings(max_examples=400, deadline=None)
@given(parts=PARTS, cuts=st.lists(st.integers(0, 3000), max_size=12), ext=st.booleans())
def test_the_body_whatever_the_reads(parts: list[bytes], cuts: list[int], ext: bool) -> None:
    data = chunked(parts, ext) + b"trailing garbage is never read"
    assert b"".join(dechunk(pieces(data, cuts))) == b"".join(parts)


def test_one_read_per_event_yields_each_event_whole() -> None:
    events = [b'{"type":"MODIFIED"}\n', b'{"type":"ADDED"}\n']
    reads = [chunked([e])[: -len(b"0\r\n\r\n")] for e in events]
    assert list(dechunk(reads)) == events
    assert list(split_lines(dechunk(reads))) == [e.rstrip(b"\n") for e in events]


def test_a_stream_broken_off_ends_quietly() -> None:
    assert b"".join(dechunk([b"5\r\nabc"])) == b"abc"
    assert list(dechunk([])) == []


@pytest.mark.parametrize(
    "data",
    [b"zz\r\nab\r\n", b"3\r\nabcd\r\n", b"\r\n", b"-1\r\n", b"1" * 17 + b"\r\n", b"x" * 5000],
)
def test_broken_framing_is_a_stream_error(data: bytes) -> None:
    with pytest.raises(StreamError):
        b"".join(dechunk([data]))


@settings(max_examples=400, deadline=None)
@given(reads=st.lists(st.binary(max_size=64), max_size=8))
def test_garbage_raises_nothing_but_stream_error(reads: list[bytes]) -> None:
    try:
        b"".join(dechunk(reads))
    except StreamError:
        pass


EVENTS = [b'{"n":%d}\n' % i for i in range(50)]


class Chunked(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in EVENTS:
            self.wfile.write(chunked([e])[: -len(b"0\r\n\r\n")])
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_real_response_is_read_through_its_socket_file() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pool = urllib3.PoolManager()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/watch"
        resp = pool.request("GET", url, preload_content=False)
        assert stream._socket_file(resp) is not None  # the shape this urllib3 has
        got = list(split_lines(body_reads(resp)))
        assert got == [e.rstrip(b"\n") for e in EVENTS]
        resp.release_conn()
        resp = pool.request("GET", url, preload_content=False)
        resp.read1(3)  # once something was read urllib3's way, it stays urllib3's
        assert stream._socket_file(resp) is None
        rest = b"".join(body_reads(resp))
        assert b"".join(EVENTS).endswith(rest) and len(rest) > 0
    finally:
        pool.clear()
        server.shutdown()
        server.server_close()


def test_paced_reads_take_what_arrived_meanwhile_at_once() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pool = urllib3.PoolManager()
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/watch"
        resp = pool.request("GET", url, preload_content=False)
        got = list(split_lines(body_reads(resp, pause=0.2, wait=wait)))
        assert got == [e.rstrip(b"\n") for e in EVENTS]
        assert 1 <= len(waits) < len(EVENTS) and set(waits) == {0.2}
        resp.release_conn()
    finally:
        pool.clear()
        server.shutdown()
        server.server_close()


def test_a_pause_without_a_socket_is_no_pause() -> None:
    waits: list[float] = []
    got = b"".join(body_reads(Plain(b"abc\ndef"), size=2, pause=5.0, wait=waits.append))
    assert got == b"abc\ndef" and waits == []


class Plain:
    """Anything that is not a urllib3 response over a socket: ``read1`` only."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read1(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_anything_else_is_read_with_read1() -> None:
    assert b"".join(body_reads(Plain(b"abc\ndef"))) == b"abc\ndef"
