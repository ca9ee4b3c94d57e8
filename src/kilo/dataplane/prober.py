"""Liveness probes over UDP (native liveness mode): every agent answers probes on its probe
port; it sends one to each of its targets every ``PROBE_INTERVAL_SECONDS`` and tells the agent
when a target goes silent past the threshold or answers again.

A probe is 16 bytes: an 8-byte magic and an 8-byte token; the answer echoes the token under
another magic, so it is never larger than what caused it (no amplification), and anything else
is dropped unread. The token is this process's secret: an answer that does not echo it (a
spoofed "the leader is alive") is ignored. Answers are capped at ``MAX_ANSWERS_PER_SECOND``.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable

from kilo.leadership import PROBE_INTERVAL_SECONDS, Health, ProbeTarget, ProbeTracker

log = logging.getLogger("kilo.probe")

PROBE = b"KILOPRB1"
ANSWER = b"KILOPRA1"
SIZE = 16
MAX_ANSWERS_PER_SECOND = 500
#: The probe port (UDP): Kilo's metrics port number, over UDP.
DEFAULT_PROBE_PORT = 1107


def _plain(address: str) -> str:
    return address.removeprefix("::ffff:") if "." in address else address


def _wire(address: str) -> str:
    return f"::ffff:{address}" if "." in address and ":" not in address else address


class UdpProber:
    """The agent's ``Prober`` port over a dual-stack UDP socket."""

    def __init__(self, port: int = DEFAULT_PROBE_PORT, bind: str = "::") -> None:
        self.port = port
        self.bind = bind
        self.tracker = ProbeTracker()
        self._token = os.urandom(8)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._on_change: Callable[[], None] = lambda: None
        self._budget = float(MAX_ANSWERS_PER_SECOND)
        self._refilled = time.monotonic()

    def start(self, on_change: Callable[[], None]) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, self.port))
        sock.setblocking(False)
        self._sock, self._on_change = sock, on_change
        self._thread = threading.Thread(target=self._run, daemon=True, name="kilo-probe")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def set_targets(self, targets: Iterable[ProbeTarget]) -> None:
        with self._lock:
            self.tracker.set_targets(targets, time.monotonic())

    def health(self) -> Health:
        with self._lock:
            return self.tracker.health(time.monotonic())

    # -- the thread

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        state: tuple[int, ...] = ()
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self._send_all(sock)
                next_send = now + PROBE_INTERVAL_SECONDS
                with self._lock:
                    fresh = self.tracker.state(now)
                if fresh != state:
                    state = fresh
                    self._on_change()
            ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
            if ready:
                self._receive(sock)

    def _send_all(self, sock: socket.socket) -> None:
        with self._lock:
            addresses = {t.address for t in self.tracker.due(time.monotonic())}
        for address in addresses:
            try:
                sock.sendto(PROBE + self._token, (_wire(address), self.port))
            except OSError as e:  # no route (yet): the silence counts
                log.debug("probe to %s: %s", address, e)

    def _receive(self, sock: socket.socket) -> None:
        for _ in range(256):  # what has arrived, then back to the timer
            try:
                data, source = sock.recvfrom(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("probe socket: %s", e)
                return
            if len(data) != SIZE:
                continue
            if data[:8] == PROBE:
                if self._may_answer():
                    try:
                        sock.sendto(ANSWER + data[8:], source[:2])
                    except OSError as e:
                        log.debug("answer to %s: %s", source[0], e)
            elif data[:8] == ANSWER and data[8:] == self._token:
                with self._lock:
                    self.tracker.replied(_plain(str(source[0])), time.monotonic())

    def _may_answer(self) -> bool:
        now = time.monotonic()
        self._budget = min(
            float(MAX_ANSWERS_PER_SECOND),
            self._budget + (now - self._refilled) * MAX_ANSWERS_PER_SECOND,
        )
        self._refilled = now
        if self._budget < 1.0:
            return False
        self._budget -= 1.0
        return True
