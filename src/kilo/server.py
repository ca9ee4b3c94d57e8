"""The agent's HTTP endpoints: ``/health``, ``/metrics`` (Prometheus) and ``/graph``, bounded.

Every connection has a deadline to send its request and a timeout on each read and write, at
most ``max_connections`` are served at once (the rest get a 503 and are closed), and graphs are
rendered one at a time within a CPU limit, their outcomes cached by the graph's digest
(``kilo.render``). None of this changes what a well-behaved client sees.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlparse

from kilo import graph
from kilo.metrics import CONTENT_TYPE
from kilo.render import CONTENT_TYPES, FORMATS, DotMissing, GraphRenderer

if TYPE_CHECKING:
    from kilo.topology import Topology

log = logging.getLogger("kilo.server")

BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntoo many connections\r\n"
)


class Metrics(Protocol):
    def render(self) -> bytes: ...


class Source(Protocol):
    """What the endpoints read of the agent."""

    @property
    def last_reconcile_ok(self) -> bool: ...
    @property
    def topology(self) -> Topology | None: ...
    @property
    def metrics(self) -> Metrics: ...


@dataclass(frozen=True)
class Limits:
    """``timeout``: seconds for a client to send its whole request, and for each read or write.
    ``max_connections``: connections served at once. ``graph_cpu_seconds``: CPU time of one
    ``dot`` render (its wall time is twice that)."""

    timeout: float = 10.0
    max_connections: int = 16
    graph_cpu_seconds: int = 10


def parse_listen(listen: str) -> tuple[str, int]:
    """Kilo's ``--listen`` form: ``HOST:PORT`` or ``:PORT`` (all addresses)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: Limits
    ) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # The stdlib looks up the host's FQDN here; where no DNS answers (a node namespace, an
        # air-gapped host) that stalls the agent's start for seconds. The name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away or was cut off at its deadline is no news; anything else is.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended early", client_address, exc_info=True)
        else:
            log.warning("request from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_server(source: Source, listen: str, limits: Limits | None = None) -> ThreadingHTTPServer:
    """The server, bound to ``listen`` but not yet serving (``serve_forever`` serves)."""
    lim = limits or Limits()
    renderer = GraphRenderer(
        cpu_seconds=lim.graph_cpu_seconds, wall_seconds=2.0 * lim.graph_cpu_seconds
    )

    class Handler(BaseHTTPRequestHandler):
        timeout = lim.timeout  # each read and write of the socket

        def setup(self) -> None:
            super().setup()
            # The whole request within the timeout, not one byte per timeout (a slow client).
            self._expired = False
            self._deadline = threading.Timer(lim.timeout, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def _expire(self) -> None:
            self._expired = True  # the reads now see the end of the stream: not a request
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self) -> None:
            self._deadline.cancel()
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(
            self,
            code: int,
            body: bytes,
            ctype: str = "text/plain; charset=utf-8",
            retry: bool = False,
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if retry:
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._deadline.cancel()  # the request is in; writes keep their own timeout
            if self._expired:
                self.close_connection = True
                return
            url = urlparse(self.path)
            if url.path == "/health":
                ok = source.last_reconcile_ok
                self._send(200 if ok else 503, b"ok\n" if ok else b"not reconciled\n")
            elif url.path == "/metrics":
                self._send(200, source.metrics.render(), CONTENT_TYPE)
            elif url.path == "/graph":
                self._graph((parse_qs(url.query).get("format") or ["dot"])[0])
            else:
                self._send(404, b"not found\n")

        def _graph(self, fmt: str) -> None:
            t = source.topology
            if t is None:
                self._send(503, b"no topology yet\n", retry=True)
                return
            dot = graph.dot(t)
            if fmt == "dot":
                self._send(200, dot.encode(), CONTENT_TYPES["dot"])
                return
            if fmt not in FORMATS:
                self._send(400, b"formats: dot, svg, png\n")
                return
            try:
                r = renderer.render(dot, fmt)
            except DotMissing:
                self._send(400, f"format {fmt} needs Graphviz's dot program\n".encode())
                return
            if r.ok:
                self._send(200, r.body, CONTENT_TYPES[fmt])
            elif r.limited:
                msg = f"graph not rendered: {r.error}; format=dot is always served\n"
                self._send(503, msg.encode(), retry=True)
            else:
                self._send(500, f"{r.error}\n".encode())

    host, port = parse_listen(listen)
    return _Server((host, port), Handler, lim)


def serve(source: Source, listen: str, limits: Limits | None = None) -> ThreadingHTTPServer:
    """Serve the endpoints on ``listen`` from a thread of their own."""
    srv = make_server(source, listen, limits)
    threading.Thread(target=srv.serve_forever, name="kilo-http", daemon=True).start()
    host, port = srv.server_address[:2]
    log.info("serving /health, /metrics and /graph on %s:%d", host, port)
    return srv
