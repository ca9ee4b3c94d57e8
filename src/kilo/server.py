"""The agent's HTTP endpoints: ``/health``, ``/metrics`` (Prometheus) and ``/graph``."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

from kilo import graph
from kilo.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from kilo.agent import Agent

log = logging.getLogger("kilo.server")


def parse_listen(listen: str) -> tuple[str, int]:
    """Kilo's ``--listen`` form: ``HOST:PORT`` or ``:PORT`` (all addresses)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # The stdlib looks up the host's FQDN here; where no DNS answers (a node namespace, an
        # air-gapped host) that stalls the agent's start for seconds. The name is never used.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def serve(agent: Agent, listen: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/health":
                ok = agent.last_reconcile_ok
                self._send(200 if ok else 503, b"ok\n" if ok else b"not reconciled\n")
            elif url.path == "/metrics":
                self._send(200, agent.metrics.render(), CONTENT_TYPE)
            elif url.path == "/graph":
                fmt = (parse_qs(url.query).get("format") or ["dot"])[0]
                t = agent.topology
                if t is None:
                    self._send(503, b"no topology yet\n")
                    return
                dot = graph.dot(t)
                if fmt == "dot":
                    self._send(200, dot.encode(), "text/vnd.graphviz")
                    return
                exe = shutil.which("dot")
                if fmt not in ("svg", "png") or exe is None:
                    self._send(
                        400,
                        f"format {fmt!r} needs Graphviz's dot program "
                        "(formats: dot, svg, png)\n".encode(),
                    )
                    return
                r = subprocess.run(
                    [exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, check=False
                )
                self._send(
                    200 if r.returncode == 0 else 500,
                    r.stdout or r.stderr,
                    "image/svg+xml" if fmt == "svg" else "image/png",
                )
            else:
                self._send(404, b"not found\n")

    host, port = parse_listen(listen)
    srv = _Server((host, port), Handler)
    threading.Thread(target=srv.serve_forever, name="kilo-http", daemon=True).start()
    log.info("serving /health, /metrics and /graph on %s:%d", host, port)
    return srv
