"""Graphviz's ``dot``, bounded: a CPU-time limit and a wall-clock limit on the process, and for a
server, one render at a time with a small cache keyed by the graph's digest.

A 100-node full mesh costs ``dot`` minutes of CPU as SVG; an agent must not spend them for every
caller. The limits are the caller's to choose (``kg --graph-cpu-limit``); ``kgctl graph`` runs
``dot`` with none, as the user asked for it on their own machine.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass

FORMATS = ("svg", "png")  # what dot renders for us; "dot" itself needs no program
CONTENT_TYPES = {"svg": "image/svg+xml", "png": "image/png", "dot": "text/vnd.graphviz"}


@dataclass(frozen=True)
class Rendered:
    """The outcome of one render: ``ok`` with the image, or why not (``error``, one line).

    ``limited`` says the error is a limit of ours (CPU, time, another render in progress), not
    a fault of the graph or of ``dot``: a server answers 503 for it.
    """

    ok: bool
    body: bytes = b""
    error: str = ""
    limited: bool = False
    lasting: bool = True  # the same graph would fare the same again (so it may be cached)


class DotMissing(Exception):
    """Graphviz's ``dot`` is not installed."""


def run_dot(
    text: str,
    fmt: str,
    *,
    cpu_seconds: int | None = None,
    wall_seconds: float | None = None,
    exe: str | None = None,
) -> Rendered:
    """Render ``text`` (DOT) as ``fmt`` (svg or png) with ``dot``; never raises but DotMissing."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of dot, {', '.join(FORMATS)}")
    program = exe or shutil.which("dot")
    if program is None:
        raise DotMissing("Graphviz's dot program is not installed")
    try:
        proc = subprocess.Popen(
            [program, f"-T{fmt}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as e:
        return Rendered(False, error=f"cannot run dot: {e}", lasting=False)
    if cpu_seconds is not None:
        # Set from outside: no code runs in the child between fork and exec (a threaded server).
        # dot reads its whole input before it lays anything out, so the limit is in place long
        # before the CPU is spent.
        try:
            resource.prlimit(proc.pid, resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        except OSError:
            proc.kill()
            proc.communicate()
            return Rendered(False, error="cannot limit dot's CPU time", limited=True, lasting=False)
    try:
        out, err = proc.communicate(text.encode(), timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Rendered(False, error=f"rendering took longer than {wall_seconds:g}s", limited=True)
    if proc.returncode == 0:
        return Rendered(True, body=out)
    if cpu_seconds is not None and proc.returncode in (-9, -24):  # SIGKILL, SIGXCPU
        return Rendered(
            False, error=f"rendering needs more than {cpu_seconds}s of CPU", limited=True
        )
    reason = err.decode(errors="replace").strip().splitlines()
    return Rendered(False, error=f"dot failed: {reason[0] if reason else proc.returncode}")


class GraphRenderer:
    """One render at a time, the outcomes of the last few graphs kept (failures too, so a graph
    too large to render is refused at once the next time, not after another CPU limit's worth).
    """

    def __init__(
        self,
        cpu_seconds: int = 10,
        wall_seconds: float = 20.0,
        cache_size: int = 8,
        exe: str | None = None,
    ) -> None:
        self.cpu_seconds = cpu_seconds
        self.wall_seconds = wall_seconds
        self.cache_size = cache_size
        self.exe = exe
        self._busy = threading.Lock()
        self._guard = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], Rendered] = OrderedDict()

    def _cached(self, key: tuple[str, str]) -> Rendered | None:
        with self._guard:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def render(self, text: str, fmt: str) -> Rendered:
        """The image of ``text``: from the cache, else rendered now if no other render runs."""
        key = (hashlib.sha256(text.encode()).hexdigest(), fmt)
        hit = self._cached(key)
        if hit is not None:
            return hit
        if not self._busy.acquire(blocking=False):
            return Rendered(False, error="another graph is being rendered", limited=True)
        try:
            hit = self._cached(key)  # rendered by the one before us
            if hit is not None:
                return hit
            result = run_dot(
                text,
                fmt,
                cpu_seconds=self.cpu_seconds,
                wall_seconds=self.wall_seconds,
                exe=self.exe,
            )
            if not result.lasting:
                return result
            with self._guard:
                self._cache[key] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return result
        finally:
            self._busy.release()
