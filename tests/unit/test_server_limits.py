"""The agent's HTTP endpoints under abuse: a slow client, too many connections, a graph too large
to render, renders that would run side by side. Served on loopback from a stand-in agent; the
graphs are laid out by the real ``dot``, or by stand-in ``dot`` programs on PATH where a test needs
to count or hold renders."""

from __future__ import annotations

import http.client
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from kilo.mesh import Options, mesh_topology, read_cluster
from kilo.model import Granularity
from kilo.render import DotMissing, GraphRenderer, run_dot
from kilo.server import Limits, make_server
from kilo.topology import Topology
from tests.unit.helpers import NOW, node_obj


@dataclass
class Metrics:
    def render(self) -> bytes:
        return b"kilo_reconcile_total 1\n"


@dataclass
class Source:
    topology: Topology | None = None
    last_reconcile_ok: bool = True
    metrics: Metrics = field(default_factory=Metrics)


def full_mesh(n: int) -> Topology:
    nodes = [
        node_obj(f"n{i:03}", location=f"l{i:03}", pod_cidr=f"10.{i // 250}.{i % 250}.0/24")
        for i in range(n)
    ]
    state = read_cluster(nodes, [], "topology.kubernetes.io/region")
    return mesh_topology(state, Options(granularity=Granularity.FULL), NOW)


class Served:
    """Servers of one stand-in agent, each started with its own limits."""

    def __init__(self) -> None:
        self.source = Source(topology=full_mesh(3))
        self.servers: list[ThreadingHTTPServer] = []

    def start(self, limits: Limits) -> int:
        srv = make_server(self.source, "127.0.0.1:0", limits)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        return int(srv.server_address[1])


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    for srv in s.servers:
        srv.shutdown()
        srv.server_close()


def get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()


def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A ``dot`` on PATH that runs ``body`` (sh), after counting itself in ``runs``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "dot"
    exe.write_text(f"#!/bin/sh\necho run >> {tmp_path}/runs\ncat > /dev/null\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "runs"


def test_endpoints_unchanged_for_a_good_client(served: Served) -> None:
    port = served.start(Limits())
    assert get(port, "/health")[:2] == (200, b"ok\n")
    assert get(port, "/metrics")[0] == 200
    status, body, headers = get(port, "/graph")
    assert status == 200 and body.startswith(b"digraph")
    assert headers["Content-Type"] == "text/vnd.graphviz"
    status, body, headers = get(port, "/graph?format=svg")
    assert status == 200 and b"<svg" in body and headers["Content-Type"] == "image/svg+xml"
    assert get(port, "/graph?format=gif")[0] == 400
    assert get(port, "/nothing")[0] == 404
    served.source.topology = None
    status, _, headers = get(port, "/graph")
    assert status == 503 and headers["Retry-After"]


def test_a_silent_client_is_disconnected(served: Served) -> None:
    port = served.start(Limits(timeout=0.5))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n")  # and never the end of the headers
        assert s.recv(1024) == b""  # closed by the server, without an answer
    assert get(port, "/health")[0] == 200


def test_a_trickling_client_is_disconnected_at_the_deadline(
    served: Served,
) -> None:
    """One byte well within each read's timeout, but the whole request never within the
    deadline: the server closes the connection before the request is complete."""
    port = served.start(Limits(timeout=1.0))
    request = b"GET /health HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        closed = False
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.05)  # 20 bytes a second: a 230-byte request would take 11 s
        if not closed:
            s.settimeout(30)
            answer = s.recv(1024)
            closed = answer == b""
        assert closed


def test_connections_beyond_the_cap_get_503_and_the_cap_frees(
    served: Served,
) -> None:
    port = served.start(Limits(timeout=60, max_connections=2))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
    try:
        time.sleep(0.2)  # let the server take both
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            answer = b""
            while chunk := s.recv(1024):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 503 ")
        assert b"too many connections" in answer
    finally:
        for s in idle:
            s.close()
    for _ in range(100):  # the slots come back once the idle connections' handlers end
        try:
            if get(port, "/health")[0] == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server never served again after the idle connections closed")


def test_a_huge_graph_gets_503_within_the_cpu_limit(
    served: Served,
) -> None:
    """A 120-node full mesh as SVG takes the real dot minutes of CPU; with a one-second limit
    the request is refused with a 503 that says why, and the next one is refused from the
    cache (the same topology), while /health and format=dot are served all along."""
    served.source.topology = full_mesh(120)
    port = served.start(Limits(graph_cpu_seconds=1))
    status, body, headers = get(port, "/graph?format=svg")
    assert status == 503, body
    assert b"CPU" in body or b"longer than" in body
    assert headers["Retry-After"]
    assert get(port, "/graph?format=svg")[0] == 503
    assert get(port, "/graph")[0] == 200
    assert get(port, "/health")[0] == 200


def test_the_outcome_is_cached_by_topology(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = fake_dot(tmp_path, monkeypatch, "while :; do :; done")  # never finishes: CPU limit
    port = served.start(Limits(graph_cpu_seconds=1))
    assert get(port, "/graph?format=svg")[0] == 503
    assert get(port, "/graph?format=svg")[0] == 503
    assert runs.read_text().count("run") == 1  # the second came from the cache
    served.source.topology = full_mesh(4)  # a new topology is rendered anew
    assert get(port, "/graph?format=svg")[0] == 503
    assert runs.read_text().count("run") == 2


def test_one_render_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "release"
    fake_dot(
        tmp_path,
        monkeypatch,
        f"while [ ! -e {release} ]; do sleep 0.05; done; echo '<svg/>'",
    )
    renderer = GraphRenderer(cpu_seconds=5, wall_seconds=60)
    first: list[object] = []
    t = threading.Thread(target=lambda: first.append(renderer.render("digraph a {}", "svg")))
    t.start()
    runs = tmp_path / "runs"
    while not runs.exists():
        time.sleep(0.02)
    other = renderer.render("digraph b {}", "svg")
    assert not other.ok and other.limited and "another graph" in other.error
    release.touch()
    t.join(30)
    (done,) = first
    assert getattr(done, "ok", False) and getattr(done, "body", b"") == b"<svg/>\n"


def test_run_dot_reports_failures_as_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run_dot("digraph { a -> }", "svg")  # a syntax error: dot's own message
    assert not r.ok and not r.limited and r.error.startswith("dot failed:")
    with pytest.raises(ValueError):
        run_dot("digraph {}", "gif")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DotMissing):
        run_dot("digraph {}", "svg")
