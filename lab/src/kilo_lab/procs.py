"""The lab's processes: started in a namespace, found by namespace, stopped by PID.

``start`` is the one way the lab starts a long-running process (kg, kube-proxy, etcd,
kube-apiserver, wireguard-go of a peer, an HTTP server); ``stop`` the one way it stops any
process, given as a ``Popen`` or as (pid, start time) from the state file: SIGTERM to all, wait,
then SIGKILL. A PID whose start time no longer matches belongs to somebody else now and is left
alone. Nothing is ever found or stopped by name.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from kilo_lab import netns

log = logging.getLogger(__name__)

#: a process to stop: one we started, or (pid, start time) read back from a state file
Stoppable = subprocess.Popen[bytes] | subprocess.Popen[str] | tuple[int, int | None]


def start(
    argv: Sequence[str],
    *,
    netns_name: str | None = None,
    log_file: pathlib.Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: pathlib.Path | None = None,
    new_session: bool = True,
    preexec_fn: Callable[[], None] | None = None,
    banner: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background (inside ``netns_name``), stdin closed, stdout and stderr
    appended to ``log_file`` (discarded without one; ``banner`` is written there first)."""
    cmd = netns.command(netns_name, argv)
    full_env = dict(os.environ, **(env or {}))
    if log_file is None:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=new_session,
            preexec_fn=preexec_fn,
        )
    with open(log_file, "ab") as out:
        if banner:
            out.write(f"--- {banner} at {time.ctime()}\n".encode())
            out.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=new_session,
            preexec_fn=preexec_fn,
        )


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone (a
    zombie whose threads have all exited counts as gone; a Go program's main thread may exit
    before the others, and the process is not gone until they have)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] in ("Z", "X") and len(os.listdir(f"/proc/{pid}/task")) <= 1:
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``started``, is still the same process)."""
    st = start_time(pid)
    return st is not None and (started is None or st == started)


def ident(proc: Stoppable) -> tuple[int, int | None]:
    """(pid, start time) of a process."""
    if isinstance(proc, tuple):
        return proc
    return proc.pid, start_time(proc.pid)


def stop(procs: Iterable[Stoppable], timeout: float = 15.0) -> None:
    """Stop processes: SIGTERM to every one still running, wait up to ``timeout`` for all of
    them, SIGKILL the rest. ``Popen`` objects get their return code collected."""
    items = list(procs)
    popens = [p for p in items if not isinstance(p, tuple)]
    todo = [ident(p) for p in items if isinstance(p, tuple) or p.poll() is None]
    todo = [(pid, st) for pid, st in todo if alive(pid, st)]
    for pid, _ in todo:
        _signal(pid, signal.SIGTERM)
    todo = _wait_gone(todo, popens, timeout)
    for pid, _ in todo:
        log.warning("pid %d did not stop within %.0f s of SIGTERM; killing it", pid, timeout)
        _signal(pid, signal.SIGKILL)
    _wait_gone(todo, popens, 5.0)
    for p in popens:
        p.poll()


def pids(netns_name: str) -> list[int]:
    """The processes whose network namespace is ``netns_name``."""
    if not netns.exists(netns_name):
        return []
    out = netns.run(["ip", "netns", "pids", netns_name], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def children(netns_name: str, parent: int) -> list[int]:
    """The processes in ``netns_name`` whose parent is ``parent``."""
    out = []
    for pid in pids(netns_name):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            out.append(pid)
    return out


def stop_all_in(netns_name: str, timeout: float = 10.0) -> list[int]:
    """Stop every process still running inside ``netns_name`` (one the lab created)."""
    found = [(pid, start_time(pid)) for pid in pids(netns_name) if pid != os.getpid()]
    stop(found, timeout)
    return [pid for pid, _ in found]


def _wait_gone(
    todo: list[tuple[int, int | None]],
    popens: Sequence[subprocess.Popen[bytes] | subprocess.Popen[str]],
    timeout: float,
) -> list[tuple[int, int | None]]:
    deadline = time.monotonic() + timeout
    ours = {p.pid: p for p in popens}

    def running(pid: int, st: int | None) -> bool:
        if pid in ours:  # our child: until it is reaped (which keeps its exit code)
            return ours[pid].poll() is None
        _reap([pid])
        return alive(pid, st)

    while todo and time.monotonic() < deadline:
        todo = [(pid, st) for pid, st in todo if running(pid, st)]
        if todo:
            time.sleep(0.05)
    return todo


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    """Collect those of ``pids`` that are exited children of ours."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def tail(path: pathlib.Path, lines: int = 20) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
