"""Network namespaces, bridges, veth pairs, addresses and routes for the lab, through ``ip``.

Nothing here touches the root namespace: every link is created inside a named namespace (a veth
pair is created in one namespace with its peer end moved straight into another), and bridges
live in the lab's "switch" namespace.

The lab enters a namespace in one way for a process, ``command`` (``ip netns exec NS ...``:
every command line of the lab that runs inside a namespace is built there), and in one way for
Python code of its own, ``call`` (a thread that has joined the namespace, for a socket or an
HTTP request made from the lab process itself).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

NETNS_DIR = "/run/netns"
IFNAMSIZ = 15
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsError(RuntimeError):
    """A command failed; the message carries its stderr."""


def command(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (as is for None): the one way the lab enters a namespace
    to run a process."""
    return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]


def with_mount(source: str, target: str, argv: Sequence[str]) -> list[str]:
    """``argv`` with directory ``source`` bound over ``target`` (created if missing): to be run
    through ``command``, whose ``ip netns exec`` gives it a mount namespace of its own whose
    mounts do not propagate back, so only that process (and its children) sees the mount."""
    script = 'mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["sh", "-c", script, "kpy-mount", source, target, *argv]


def command_with_mount(netns: str, source: str, target: str, argv: Sequence[str]) -> list[str]:
    """``argv`` inside ``netns`` with ``source`` bound over ``target`` (see ``with_mount``)."""
    return command(netns, with_mount(source, target, argv))


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside ``netns`` if given) and capture its output."""
    cmd = command(netns, argv)
    proc = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` inside ``netns``."""
    return run(["ip", *args], netns=netns, check=check)


def call(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has joined the named network namespace (None: right here):
    the one way Python code of the lab process runs inside a namespace."""
    if netns is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (handed to the caller below)
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"kpy-netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


def free_port(host: str = "127.0.0.1", netns: str | None = None) -> int:
    """A TCP port nobody listens on right now, at ``host`` (inside ``netns`` if given)."""

    def pick() -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])

    return call(netns, pick)


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
    """A new named namespace with ``lo`` up (and IPv4 and IPv6 forwarding, if asked), without
    IPv6 duplicate address detection (an address is usable at once, not tentative for a second
    or two: the lab's addresses are unique by construction).

    ``strict_arp``: answer ARP only for addresses of the interface asked on (``arp_ignore=1``,
    ``arp_announce=2``), as separate machines would; otherwise Linux's weak host model lets a
    host on a shared bridge reach another's addresses on other networks (a leader's LAN address
    over the "internet"), which would hide a missing tunnel.
    """
    run(["ip", "netns", "add", name])
    ip(name, "link", "set", "lo", "up")
    settings = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
    if forwarding:
        settings |= {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    if strict_arp:
        settings.update(
            {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
        )
    for key, value in settings.items():
        sysctl(name, key, value)


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
    extra = ["nodad"] if ":" in cidr else []
    ip(netns, "address", "add", cidr, "dev", dev, *extra)


def add_route(netns: str, dst: str, dev: str, via: str | None = None, ipv6: bool = False) -> None:
    """A route (``ipv6``: an IPv6 one, e.g. the IPv6 ``default``)."""
    args = ["-6"] if ipv6 or ":" in dst or (via is not None and ":" in via) else []
    args += ["route", "replace", dst]
    if via is not None:
        args += ["via", via]
    ip(netns, *args, "dev", dev)


def links(netns: str) -> list[str]:
    """The names of the links in ``netns``."""
    out = ip(netns, "-o", "link", "show", check=False).stdout
    result: list[str] = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            result.append(parts[1].strip().split("@", 1)[0])
    return result


def addresses(netns: str, dev: str | None = None, ipv6: bool = False) -> list[str]:
    """The IPv4 addresses (``ipv6``: the global IPv6 ones), with prefix length, in ``netns``
    (on ``dev``)."""
    family = ["-6", "address", "show", "scope", "global"] if ipv6 else ["-4", "address", "show"]
    args = ["-o", *family] + (["dev", dev] if dev else [])
    out = ip(netns, *args, check=False).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


def flush_neighbour(netns: str, address: str) -> None:
    """Forget the cached link-layer address of ``address`` in ``netns``."""
    ip(netns, "neigh", "flush", "to", address, check=False)
