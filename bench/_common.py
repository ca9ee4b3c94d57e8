"""Shared helpers of the lab benchmarks (not a benchmark itself).

Every benchmark brings up its own small lab under a random name and always tears it down;
``lab_session`` turns SIGTERM/SIGHUP into an exception so that happens on those too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kilo_lab import netns, poll, procs
from kilo_lab.lab import Lab, LabError
from kilo_lab.signals import raise_on


def two_locations(name: str, peers: Sequence[str] = ()) -> dict[str, Any]:
    """The benchmarks' usual lab: one cluster, locations aws and gcp of two nodes each, one
    public leader per location, a pod on every node, and the given peers."""
    return {
        "name": name,
        "clusters": [
            {
                "name": "c1",
                "granularity": "location",
                "locations": [
                    {"name": "aws", "nodes": [{"name": "a1", "public": True}, "a2"]},
                    {"name": "gcp", "nodes": [{"name": "g1", "public": True}, "g2"]},
                ],
            }
        ],
        "peers": [{"name": p} for p in peers],
    }


def lab_name(prefix: str) -> str:
    """A unique lab name (at most 12 characters)."""
    return f"{prefix}{uuid.uuid4().hex[: 12 - len(prefix)]}"


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: run as root (the lab uses network namespaces)")


class _Stop(BaseException):
    pass


_OWNER = os.getpid()


@contextlib.contextmanager
def lab_session(spec: Mapping[str, Any], **kw: Any) -> Iterator[Lab]:
    """``Lab(spec)`` up, yielded, and always down (also on Ctrl-C, SIGTERM, SIGHUP)."""
    need_root()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    old = raise_on((signal.SIGTERM, signal.SIGHUP), _Stop)
    lab = Lab(spec, progress=lambda m: say(f"  lab: {m}"), **kw)
    try:
        t0 = time.monotonic()
        lab.up()
        say(f"lab {lab.name} up in {time.monotonic() - t0:.1f} s")
        yield lab
    finally:
        if os.getpid() != _OWNER:  # never tear down from a forked child
            os._exit(1)
        # a second signal during teardown must not interrupt it
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            lab.down()
            left = netns.names(f"kpy-{lab.name}-")
            if left or lab.dir.exists():
                say(f"WARNING: lab {lab.name} left behind: {left or ''} {lab.dir}")
            else:
                say(f"lab {lab.name} is gone (no namespace, process or state left)")
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- statistics and tables ------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    xs = sorted(values)
    k = max(0, math.ceil(p / 100 * len(xs)) - 1)
    return xs[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, right-aligned except the first column."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.2f}"
    return str(c)


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command (the first is field 3, the state);
    None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_ticks(pid: int, children: bool = False) -> int:
    """utime+stime (+ cutime+cstime, its waited-for children) of ``pid``; 0 if it is gone."""
    f = stat_fields(pid)
    if f is None:
        return 0
    # f[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    u, s, cu, cs = (int(f[i - 3]) for i in (14, 15, 16, 17))
    return u + s + ((cu + cs) if children else 0)


def comm(pid: int) -> str:
    """The process's command name; "" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_note() -> str:
    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the start (other work on the machine skews these figures)"
    )


# --- pings ----------------------------------------------------------------------------------

_TS = re.compile(r"^\[(\d+\.\d+)\].*bytes from")


class FirstReply:
    """``ping -D -i INTERVAL`` from ``host`` to ``ip`` in the background; ``.at`` becomes the
    wall-clock time (``time.time()``) of the first reply. Started by us, stopped by PID."""

    def __init__(self, lab: Lab, host: str, ip: str, interval: float = 0.05) -> None:
        self.host, self.ip = host, ip
        self.at: float | None = None
        self.done = threading.Event()
        self.proc = subprocess.Popen(
            netns.command(lab.ns(host), ["ping", "-n", "-D", "-i", str(interval), "-W", "1", ip]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = _TS.match(line)
            if m and self.at is None:
                self.at = float(m.group(1))
                self.done.set()
                break
        self.done.set()

    def wait(self, timeout: float) -> float | None:
        self.done.wait(timeout)
        return self.at

    def stop(self) -> None:
        procs.stop([self.proc], timeout=5)
        self._thread.join(2)


@contextlib.contextmanager
def first_replies(
    lab: Lab, probes: Sequence[tuple[str, str]], interval: float = 0.05
) -> Iterator[list[FirstReply]]:
    """Several ``FirstReply`` probes ``(host, ip)`` at once, always stopped afterwards."""
    started: list[FirstReply] = []
    try:
        for host, ip in probes:
            started.append(FirstReply(lab, host, ip, interval))
        yield started
    finally:
        for p in started:
            p.stop()


def wait_until(
    cond: Callable[[], bool], timeout: float, step: float = 0.2, what: str = "condition"
) -> float:
    """Poll ``cond`` until true; the seconds it took (LabError after ``timeout``)."""
    return poll.wait_until(what, cond, timeout, step, error=LabError)
