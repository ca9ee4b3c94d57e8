"""A tiny HTTP server for the lab: ``python3 -m kilo_lab.httpd PORT --bind IP [--text TEXT]``.

Like ``python3 -m http.server PORT --bind IP``, but it answers every GET with one line of text
(default: ``hello from <IP>``) and binds without the reverse DNS lookup ``http.server`` makes of
its address, which in a lab namespace waits seconds for a resolver that cannot be reached.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import sys
from collections.abc import Sequence


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: no getfqdn()
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def handler(text: str) -> type[http.server.BaseHTTPRequestHandler]:
    body = (text.rstrip("\n") + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m kilo_lab.httpd", description=__doc__)
    p.add_argument("port", type=int)
    p.add_argument("--bind", required=True, metavar="IP")
    p.add_argument("--text", default=None, help="the answer (default: hello from IP)")
    args = p.parse_args(argv)
    with Server((args.bind, args.port), handler(args.text or f"hello from {args.bind}")) as srv:
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
