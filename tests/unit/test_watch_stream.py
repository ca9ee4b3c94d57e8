"""The watch stream's bytes (kilo.backend.stream): the chunked framing taken off in bulk gives
exactly the body, however the bytes arrive; broken framing ends the stream with StreamError and
nothing else; a real urllib3 response (over a socket, from a server on 127.0.0.1 in this
process) is read through its socket file, anything else through ``read1``."""

from __future__ import annotations

import http.server
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.exceptions import ProtocolError

from kilo.backend import stream
from kilo.backend.kubernetes import split_lines
from kilo.backend.stream import StreamError, body_reads, dechunk
from kilo.webhook import self_signed


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
    reads = [chunked([e])[: -len(b"0\r\n\r\n")] for e in events] + [b"0\r\n\r\n"]
    assert list(dechunk(reads)) == events
    assert list(split_lines(dechunk(reads))) == [e.rstrip(b"\n") for e in events]


def test_a_stream_broken_off_is_a_protocol_error_after_what_arrived() -> None:
    got: list[bytes] = []
    with pytest.raises(ProtocolError):
        got.extend(dechunk([b"5\r\nabc"]))
    assert got == [b"abc"]
    for reads in ([], [b"3\r\nabc\r\n"], [b"3\r\nabc"], [b"3\r\nabc\r"], [b"1"]):
        with pytest.raises(ProtocolError):
            list(dechunk(reads))


def test_a_line_cut_short_is_never_handed_on() -> None:
    lines: list[bytes] = []
    with pytest.raises(ProtocolError):
        lines.extend(split_lines(dechunk([b'9\r\n{"n":1}\n{\r\n3\r\n"n"'])))
    assert lines == [b'{"n":1}']


def test_a_long_size_line_is_a_stream_error_however_it_arrives() -> None:
    data = b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    for reads in ([data], [data[:100], data[100:]]):
        with pytest.raises(StreamError):
            list(dechunk(reads))


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
    except (StreamError, ProtocolError):
        pass


EVENTS = [b'{"n":%d}\n' % i for i in range(50)]


class Chunked(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, e in enumerate(EVENTS):
            self.wfile.write(chunked([e])[: -len(b"0\r\n\r\n")])
            self.wfile.flush()
            if i == len(EVENTS) // 2:
                time.sleep(0.05)  # two bursts: a paced reader waits at least once
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


def test_a_partial_tls_record_never_holds_back_what_was_read() -> None:
    """A paced read takes what arrived without blocking: the head of a TLS record in the
    socket's buffer is left to the next blocking read (it used to block the read of what had
    arrived before it until the rest came, or until the read timed out)."""
    certs = self_signed(["127.0.0.1"])
    with tempfile.TemporaryDirectory() as d:
        for name, pem in (("ca", certs.ca_pem), ("cert", certs.cert_pem), ("key", certs.key_pem)):
            (Path(d) / f"{name}.pem").write_bytes(pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
    client_ctx = ssl.create_default_context(cadata=certs.ca_pem.decode())
    pool = urllib3.PoolManager(ssl_context=client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    sent, released = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server_ctx.wrap_bio(incoming, outgoing, server_side=True)

        def until_done(step: Any) -> Any:
            while True:
                try:
                    return step()
                except ssl.SSLWantReadError:
                    conn.sendall(outgoing.read())
                    incoming.write(conn.recv(65536))

        until_done(tls.do_handshake)
        conn.sendall(outgoing.read())
        request = b""
        while b"\r\n\r\n" not in request:
            request += until_done(lambda: tls.read(65536))
        tls.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(outgoing.read())
        time.sleep(0.2)
        tls.write(chunked([EVENTS[0]])[:-5])
        first = outgoing.read()
        tls.write(chunked([EVENTS[1]]))
        second = outgoing.read()
        conn.sendall(first + second[:3])  # the first event and the head of the next record
        sent.set()
        time.sleep(1.5)
        released.set()
        conn.sendall(second[3:])
        time.sleep(0.2)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/watch"
        resp = pool.request("GET", url, preload_content=False)
        lines = split_lines(body_reads(resp, pause=0.01))
        assert next(lines) == EVENTS[0].rstrip(b"\n")
        assert sent.is_set() and not released.is_set()  # taken while the rest was held back
        assert list(lines) == [EVENTS[1].rstrip(b"\n")]
    finally:
        thread.join(timeout=5)
        pool.clear()
        listener.close()


def test_an_error_while_taking_what_arrived_comes_after_it() -> None:
    here, there = socket.socketpair()
    reads: list[bytes | OSError] = [b"one", b"two", ConnectionResetError()]

    def read1(size: int) -> bytes:
        got = reads.pop(0)
        if isinstance(got, OSError):
            raise got
        return got

    try:
        here.settimeout(7.0)
        paced = stream._paced(read1, here, 10, 0.1, lambda _: None)
        assert next(paced) == b"onetwo"
        assert here.gettimeout() == 7.0  # the socket's timeout is back
        with pytest.raises(ConnectionResetError):
            next(paced)
    finally:
        here.close()
        there.close()


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
