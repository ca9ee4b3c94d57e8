"""Network namespaces, bridges, veth pairs, addresses and routes for the lab, through ``ip``.

Nothing here touches the root namespace: every link is created inside a named namespace (a veth
pair is created in one namespace with its peer end moved straight into another), and bridges
live in the lab's "switch" namespace. Processes are found by the namespace they run in
(``pids``) and stopped by PID (``terminate``), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

NETNS_DIR = "/run/netns"
IFNAMSIZ = 15


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside ``netns`` with ``ip netns exec`` if given) and capture its output."""
    cmd = list(argv)
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip -n NETNS ARGS``."""
    return run(["ip", "-n", netns, *args], check=check)


# --- namespaces ---------------------------------------------------------------------------


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def names(prefix: str = "") -> list[str]:
    """The named network namespaces starting with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str, forwarding: bool = False, strict_arp: bool = False) -> None:
    """A new named namespace with ``lo`` up (and IPv4 forwarding, if asked).

    ``strict_arp``: answer ARP only for addresses of the interface asked on (``arp_ignore=1``,
    ``arp_announce=2``), as separate machines would; otherwise Linux's weak host model lets a
    host on a shared bridge reach another's addresses on other networks (a leader's LAN address
    over the "internet"), which would hide a missing tunnel.
    """
    run(["ip", "netns", "add", name])
    ip(name, "link", "set", "lo", "up")
    settings = {"net.ipv4.ip_forward": "1"} if forwarding else {}
    if strict_arp:
        settings.update(
            {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
        )
    if settings:
        script = " && ".join(
            f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items()
        )
        run(["sh", "-c", script], netns=name)


def delete(name: str) -> None:
    """Delete a named namespace (its links go with it once no process holds it)."""
    if exists(name):
        run(["ip", "netns", "delete", name], check=False)


def inode(name: str) -> int | None:
    """The inode of a namespace (wireguard-go socket directories are keyed by it)."""
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except OSError:
        return None


def sysctl(netns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    run(["sh", "-c", 'echo "$1" > "$2"', "sh", value, path], netns=netns)


# --- links --------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or len(name) > IFNAMSIZ:
        raise NetnsError(f"link name {name!r}: 1 to {IFNAMSIZ} characters")


def add_bridge(netns: str, name: str) -> None:
    """A bridge in ``netns``, up, without STP delays or multicast snooping."""
    _check_name(name)
    ip(
        netns,
        "link",
        "add",
        name,
        "type",
        "bridge",
        "forward_delay",
        "0",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    )
    ip(netns, "link", "set", name, "up")


def add_veth(
    ns_a: str,
    name_a: str,
    ns_b: str,
    name_b: str,
    *,
    master_b: str | None = None,
    mtu: int | None = None,
) -> None:
    """A veth pair ``name_a`` in ``ns_a`` <-> ``name_b`` in ``ns_b`` (enslaved to ``master_b``),
    both up."""
    _check_name(name_a)
    _check_name(name_b)
    extra = ["mtu", str(mtu)] if mtu else []
    ip(ns_a, "link", "add", name_a, *extra, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    if master_b is not None:
        ip(ns_b, "link", "set", name_b, "master", master_b)
    ip(ns_b, "link", "set", name_b, "up")
    ip(ns_a, "link", "set", name_a, "up")


def add_address(netns: str, dev: str, cidr: str) -> None:
    ip(netns, "address", "add", cidr, "dev", dev)


def add_route(netns: str, dst: str, dev: str, via: str | None = None) -> None:
    args = ["route", "replace", dst]
    if via is not None:
        args += ["via", via]
    ip(netns, *args, "dev", dev)


def links(netns: str) -> list[str]:
    """The names of the links in ``netns``."""
    out = ip(netns, "-o", "link", "show", check=False).stdout
    result = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            result.append(parts[1].strip().split("@", 1)[0])
    return result


def addresses(netns: str, dev: str | None = None) -> list[str]:
    """The IPv4 addresses (with prefix length) in ``netns`` (on ``dev``)."""
    args = ["-o", "-4", "address", "show"] + (["dev", dev] if dev else [])
    out = ip(netns, *args, check=False).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


# --- processes ----------------------------------------------------------------------------


def pids(netns: str) -> list[int]:
    """The processes whose network namespace is ``netns``."""
    if not exists(netns):
        return []
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``started``, is still the same process)."""
    st = start_time(pid)
    return st is not None and (started is None or st == started)


def terminate(procs: Iterable[tuple[int, int | None]], timeout: float = 10.0) -> None:
    """Stop processes by (pid, start time): SIGTERM, wait up to ``timeout``, then SIGKILL.

    A pid whose start time no longer matches belongs to somebody else now and is left alone.
    """
    todo = [(pid, st) for pid, st in procs if alive(pid, st)]
    for pid, _ in todo:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        _reap(pid for pid, _ in todo)
        todo = [(pid, st) for pid, st in todo if alive(pid, st)]
        if todo:
            time.sleep(0.05)
    for pid, _ in todo:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while todo and time.monotonic() < deadline:
        _reap(pid for pid, _ in todo)
        todo = [(pid, st) for pid, st in todo if alive(pid, st)]
        if todo:
            time.sleep(0.05)


def kill_all_in(netns: str, timeout: float = 10.0) -> list[int]:
    """Stop every process still running inside ``netns`` (one the lab created); returns them."""
    found = [(pid, start_time(pid)) for pid in pids(netns) if pid != os.getpid()]
    terminate(found, timeout)
    return [pid for pid, _ in found]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    """Collect those of ``pids`` that are exited children of ours (so they stop being zombies)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
