"""The WireGuard device of a node: create it, keep it alive, and make its config match a WgConf.

Two implementations sit behind one interface (``Device``):

- ``UserspaceDevice`` starts ``wireguard-go`` in the current (or a named) network namespace and
  supervises it: if the process dies it is started again and the last link settings and config
  are put back, then ``on_restart`` is called so the caller can restore its routes. wireguard-go
  always puts its UAPI socket in ``/var/run/wireguard``, a directory every network namespace of
  the machine shares, so two nodes' ``kilo0`` would clash there. Each process is therefore started
  in a private mount namespace (``unshare --mount``) with a directory of our own bind-mounted over
  ``/var/run/wireguard``; by default ``/run/kilo/wireguard/net-<inode of the netns>``, so one
  network namespace always maps to the same directory and a restarted agent finds (and adopts)
  the running process instead of starting a new one. ``wg_argv`` builds a ``wg`` command line
  that sees that directory.
- ``KernelDevice`` creates a ``type wireguard`` link and configures it over generic netlink. It is
  a thin adapter that cannot be exercised on machines without the kernel module (such as the
  ones this project is tested on); it shares the diffing logic (``plan``) with the userspace path.

``open_device`` picks one (``Mode.AUTO``: the kernel's if a ``wireguard`` link can be made).
``Device.apply(conf)`` diffs the device's current state against the desired ``WgConf`` and sends
only the differences: an unchanged peer is never named in an update, so its session and last
handshake survive. It returns a list of human-readable changes (``[]`` when nothing differed).
"""

from __future__ import annotations

import abc
import base64
import enum
import errno
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2 import IPRoute

from kilo.dataplane.uapi import (
    ZERO_KEY, DeviceState, DeviceUpdate, PeerState, PeerUpdate, UapiClient, socket_path,
)
from kilo.model import Endpoint, IPAddress, Prefix
from kilo.wireguard import WgConf, WgPeer

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420
WIREGUARD_OVERHEAD = 80
SOCKET_ROOT = "/run/kilo/wireguard"
IFF_UP = 0x1

Resolver = Callable[[Endpoint], "tuple[IPAddress, int] | None"]


class Mode(str, enum.Enum):
    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


class DeviceError(RuntimeError):
    """The device could not be created, started or configured; the message says why."""


def short_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ---------------------------------------------------------------------------- diffing (pure)

def resolve_endpoint(ep: Endpoint) -> tuple[IPAddress, int] | None:
    """The UDP address to give WireGuard: a DNS name is resolved (IPv4 first), else the IP."""
    if ep.dns:
        try:
            infos = socket.getaddrinfo(ep.dns, ep.port, type=socket.SOCK_DGRAM)
            infos.sort(key=lambda i: i[0] != socket.AF_INET)
            if infos:
                return ipaddress.ip_address(infos[0][4][0]), ep.port
        except OSError as e:
            log.warning("cannot resolve endpoint %s: %s", ep, e)
    if ep.ip is not None and ep.port:
        return ep.ip, ep.port
    return None


def _nets(prefixes: Sequence[Prefix]) -> set[str]:
    return {str(p.network) for p in prefixes}


def _peer_update(want: WgPeer, endpoint: tuple[IPAddress, int] | None) -> PeerUpdate:
    return PeerUpdate(
        public_key=want.public_key,
        preshared_key=want.preshared_key or ZERO_KEY,
        endpoint=endpoint,
        persistent_keepalive=want.persistent_keepalive,
        replace_allowed_ips=True,
        allowed_ips=list(want.allowed_ips),
    )


def _diff_peer(have: PeerState, want: WgPeer, endpoint: tuple[IPAddress, int] | None) -> tuple[PeerUpdate | None, list[str]]:
    up = PeerUpdate(public_key=want.public_key, update_only=True)
    what: list[str] = []
    want_psk = want.preshared_key if want.preshared_key and any(want.preshared_key) else None
    if want_psk != have.preshared_key:
        up.preshared_key = want_psk or ZERO_KEY
        what.append("preshared key")
    if endpoint is not None and endpoint != have.endpoint:
        up.endpoint = endpoint
        what.append(f"endpoint {_ep(have.endpoint)} -> {_ep(endpoint)}")
    if want.persistent_keepalive != have.persistent_keepalive:
        up.persistent_keepalive = want.persistent_keepalive
        what.append(f"keepalive {have.persistent_keepalive} -> {want.persistent_keepalive}")
    if _nets(want.allowed_ips) != _nets(have.allowed_ips):
        up.replace_allowed_ips = True
        up.allowed_ips = list(want.allowed_ips)
        what.append("allowed IPs " + ",".join(sorted(_nets(want.allowed_ips))))
    return (up if what else None), what


def _ep(ep: tuple[IPAddress, int] | None) -> str:
    if ep is None:
        return "none"
    return f"[{ep[0]}]:{ep[1]}" if ep[0].version == 6 else f"{ep[0]}:{ep[1]}"


def plan(current: DeviceState, desired: WgConf,
         resolve: Resolver = resolve_endpoint) -> tuple[DeviceUpdate, list[str]]:
    """The smallest update that turns ``current`` into ``desired``, and what it changes.

    ``desired.private_key is None`` leaves the private key and port alone; so does a ``None``
    listen port. A desired peer without a (resolvable) endpoint keeps whatever endpoint the device
    has, learned from the peer's packets (WireGuard cannot unset an endpoint).
    """
    up = DeviceUpdate()
    changes: list[str] = []
    if desired.private_key is not None and desired.private_key != (current.private_key or ZERO_KEY):
        up.private_key = desired.private_key
        changes.append("set private key")
    if desired.listen_port is not None and desired.listen_port != current.listen_port:
        up.listen_port = desired.listen_port
        changes.append(f"set listen port {current.listen_port} -> {desired.listen_port}")
    wanted: dict[bytes, WgPeer] = {}
    for p in desired.peers:
        wanted[p.public_key] = p
    for key, want in wanted.items():
        endpoint = resolve(want.endpoint) if want.endpoint is not None else None
        have = current.peers.get(key)
        if have is None:
            up.peers.append(_peer_update(want, endpoint))
            changes.append(f"add peer {short_key(key)} (endpoint {_ep(endpoint)}, allowed IPs "
                           + ",".join(str(a.network) for a in want.allowed_ips) + ")")
            continue
        pu, what = _diff_peer(have, want, endpoint)
        if pu is not None:
            up.peers.append(pu)
            changes.append(f"update peer {short_key(key)}: " + "; ".join(what))
    for key in current.peers:
        if key not in wanted:
            up.peers.append(PeerUpdate(public_key=key, remove=True))
            changes.append(f"remove peer {short_key(key)}")
    return up, changes


# ---------------------------------------------------------------------------- links

def _iproute(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


def auto_mtu(netns: str | None = None) -> int:
    """Kilo's ``--mtu auto``: the MTU of the default route's interface minus 80, else 1420."""
    with _iproute(netns) as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                links = ipr.get_links(r.get_attr("RTA_OIF"))
                if links:
                    return int(links[0].get_attr("IFLA_MTU")) - WIREGUARD_OVERHEAD
    return DEFAULT_MTU


def link_kind(name: str, netns: str | None = None) -> str | None:
    """``"wireguard"``, ``"tun"``... for an existing link, ``""`` if it has no kind, None if absent."""
    with _iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def configure_link(name: str, addresses: Sequence[Prefix], mtu: int | None,
                   netns: str | None = None) -> list[str]:
    """Bring ``name`` up with exactly ``addresses`` (link-local ones kept) and ``mtu``."""
    changes: list[str] = []
    with _iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise DeviceError(f"link {name} does not exist")
        index = idx[0]
        link = ipr.get_links(index)[0]
        if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
            ipr.link("set", index=index, mtu=mtu)
            changes.append(f"set {name} mtu {link.get_attr('IFLA_MTU')} -> {mtu}")
        have: dict[str, tuple[str, int]] = {}
        for a in ipr.get_addr(index=index):
            addr = a.get_attr("IFA_ADDRESS")
            if addr is not None and not ipaddress.ip_address(addr).is_link_local:
                have[f"{addr}/{a['prefixlen']}"] = (addr, a["prefixlen"])
        want = {str(a): a for a in addresses}
        for key, a in want.items():
            if key not in have:
                ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
                changes.append(f"add address {key} to {name}")
        for key, (addr, plen) in have.items():
            if key not in want:
                ipr.addr("del", index=index, address=addr, prefixlen=plen)
                changes.append(f"remove address {key} from {name}")
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")
            changes.append(f"set {name} up")
    return changes


# ---------------------------------------------------------------------------- devices

class Device(abc.ABC):
    """A WireGuard interface ``name`` in ``netns`` (None: the current network namespace)."""

    mode: Mode

    def __init__(self, name: str, netns: str | None = None, resolve: Resolver = resolve_endpoint) -> None:
        self.name = name
        self.netns = netns
        self.resolve = resolve
        self._lock = threading.RLock()
        self._conf: WgConf | None = None
        self._link: tuple[list[Prefix], int | None] | None = None

    @abc.abstractmethod
    def ensure(self) -> list[str]:
        """Create the device if it is missing (for wireguard-go: start it, or adopt a running one)."""

    @abc.abstractmethod
    def close(self, remove: bool = True) -> None:
        """Stop managing; with ``remove`` also delete the device (stop wireguard-go)."""

    @abc.abstractmethod
    def _get(self) -> DeviceState: ...

    @abc.abstractmethod
    def _set(self, update: DeviceUpdate) -> None: ...

    def state(self) -> DeviceState:
        """The device's current config and per-peer counters (handshake time, bytes, endpoint)."""
        with self._lock:
            return self._get()

    def peers(self) -> list[PeerState]:
        return list(self.state().peers.values())

    def apply(self, desired: WgConf) -> list[str]:
        """Make the device's config match ``desired``, touching only what differs."""
        with self._lock:
            self._conf = desired
            up, changes = plan(self._get(), desired, self.resolve)
            if not up.empty():
                self._set(up)
            for c in changes:
                log.info("%s: %s", self.name, c)
            return changes

    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]:
        """Set the interface's addresses and MTU and bring it up (remembered for restarts)."""
        with self._lock:
            self._link = (list(addresses), mtu)
            return configure_link(self.name, addresses, mtu, self.netns)


class KernelDevice(Device):
    """The kernel module's device, configured over generic netlink (untested here: no module)."""

    mode = Mode.KERNEL

    def ensure(self) -> list[str]:
        kind = link_kind(self.name, self.netns)
        if kind == "wireguard":
            return []
        if kind is not None:
            raise DeviceError(f"{self.name} exists and is a {kind or 'plain'} link, not wireguard")
        with _iproute(self.netns) as ipr:
            ipr.link("add", ifname=self.name, kind="wireguard")
        return [f"create wireguard link {self.name}"]

    def close(self, remove: bool = True) -> None:
        if remove:
            with _iproute(self.netns) as ipr:
                idx = ipr.link_lookup(ifname=self.name)
                if idx:
                    ipr.link("del", index=idx[0])

    def _wg(self) -> Any:
        from pyroute2 import WireGuard
        return WireGuard(netns=self.netns) if self.netns else WireGuard()

    def _get(self) -> DeviceState:
        dev = DeviceState()
        with self._wg() as wg:
            for msg in wg.info(self.name):
                k = _kernel_key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
                if k is not None and any(k):
                    dev.private_key = k
                dev.listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or dev.listen_port
                dev.fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or dev.fwmark
                for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    _merge_kernel_peer(dev, p)
        return dev

    def _set(self, update: DeviceUpdate) -> None:
        b64 = short_key
        with self._wg() as wg:
            if update.private_key is not None or update.listen_port is not None or update.fwmark is not None:
                wg.set(self.name, listen_port=update.listen_port, fwmark=update.fwmark,
                       private_key=None if update.private_key is None else b64(update.private_key))
            for p in update.peers:
                peer: dict[str, Any] = {"public_key": b64(p.public_key)}
                if p.remove:
                    peer["remove"] = True
                else:
                    peer["update_only"] = p.update_only
                    if p.preshared_key is not None:
                        peer["preshared_key"] = b64(p.preshared_key)
                    if p.endpoint is not None:
                        peer["endpoint_addr"], peer["endpoint_port"] = str(p.endpoint[0]), p.endpoint[1]
                    if p.persistent_keepalive is not None:
                        peer["persistent_keepalive"] = p.persistent_keepalive
                    if p.replace_allowed_ips:
                        peer["replace_allowed_ips"] = True
                        peer["allowed_ips"] = [str(a.network) for a in p.allowed_ips]
                wg.set(self.name, peer=peer)


def _kernel_key(v: Any) -> bytes | None:
    """pyroute2 decodes a key attribute to its base64 text (older versions: a dict with 'key')."""
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray, str)):
        return base64.b64decode(v)
    return bytes(v["key"])


def _merge_kernel_peer(dev: DeviceState, p: Any) -> None:
    """Add one WGDEVICE_A_PEERS entry (a large device arrives in several messages)."""
    key = _kernel_key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
    if key is None:
        return
    st = dev.peers.setdefault(key, PeerState(public_key=key))
    psk = _kernel_key(p.get_attr("WGPEER_A_PRESHARED_KEY"))
    if psk is not None and any(psk):
        st.preshared_key = psk
    ep = p.get_attr("WGPEER_A_ENDPOINT")
    if ep is not None and ep.get("addr") and ep["addr"] not in ("0.0.0.0", "::"):
        st.endpoint = (ipaddress.ip_address(ep["addr"]), int(ep["port"]))
    st.persistent_keepalive = p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0
    hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    if hs is not None and hs["tv_sec"]:
        st.last_handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
    st.rx_bytes = p.get_attr("WGPEER_A_RX_BYTES") or 0
    st.tx_bytes = p.get_attr("WGPEER_A_TX_BYTES") or 0
    for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        if a.get("addr"):
            st.allowed_ips.append(ipaddress.ip_interface(a["addr"]))


def find_wireguard_go() -> str:
    """The wireguard-go binary: the lab's pinned build, else ``KILO_BIN_WIREGUARD_GO``, else PATH."""
    try:
        from kilo.lab import binaries
        return str(binaries.locate("wireguard-go"))
    except Exception:  # noqa: BLE001  (no lab module, or no source checkout to build from)
        pass
    path = os.environ.get("KILO_BIN_WIREGUARD_GO") or shutil.which("wireguard-go")
    if not path:
        raise DeviceError("wireguard-go not found (set KILO_BIN_WIREGUARD_GO or put it on PATH)")
    return path


def netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/run/netns/{netns}"


def default_socket_dir(netns: str | None = None) -> str:
    """The private UAPI directory of a network namespace: the same for every agent run in it."""
    ino = os.stat(netns_path(netns) if netns else "/proc/self/ns/net").st_ino
    return f"{SOCKET_ROOT}/net-{ino}"


def _in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return (["nsenter", f"--net={netns_path(netns)}", "--"] if netns else []) + argv


def _private_mount(socket_dir: str, script: str, *args: str) -> list[str]:
    """argv running ``script`` (sh) with ``socket_dir`` mounted over /var/run/wireguard."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && shift && '
            + script, "kilo-wg", socket_dir, *args]


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class UserspaceDevice(Device):
    """wireguard-go, started and supervised by us; configured over its (private) UAPI socket.

    ``start()`` (also ``ensure()``) adopts a wireguard-go already serving this namespace's socket
    directory (a previous agent's: a restart of the agent does not restart the tunnel), else starts
    one. ``supervise()`` starts a thread that restarts it whenever it dies and then re-applies the
    last link settings and config and calls ``on_restart``. ``close(remove=False)`` stops
    supervising and leaves the process running for the next agent.
    """

    mode = Mode.USERSPACE

    def __init__(self, name: str, *, netns: str | None = None, socket_dir: str | None = None,
                 binary: str | None = None, log_level: str = "error",
                 on_restart: Callable[[], None] | None = None, resolve: Resolver = resolve_endpoint,
                 start_timeout: float = 10.0) -> None:
        super().__init__(name, netns, resolve)
        self.socket_dir = socket_dir or default_socket_dir(netns)
        self.socket_path = socket_path(name, self.socket_dir)
        self.pid_file = f"{self.socket_dir}/{name}.pid"
        self.log_file = f"{self.socket_dir}/{name}.log"
        self.binary = binary
        self.log_level = log_level
        self.on_restart = on_restart
        self.start_timeout = start_timeout
        self.client = UapiClient(self.socket_path)
        self.restarts = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- process

    def wg_argv(self, *args: str) -> list[str]:
        """argv for ``wg ARGS`` seeing this device's socket (``wg show`` needs it)."""
        return _in_netns(self.netns, _private_mount(self.socket_dir, 'exec wg "$@"', *args))

    def _adoptable(self) -> int | None:
        """The pid of a live wireguard-go serving our socket, if there is one."""
        if link_kind(self.name, self.netns) is None or not self.client.alive():
            return None
        try:
            pid = int(open(self.pid_file).read().strip())
            if "wireguard-go" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                return pid
        except (OSError, ValueError):
            pass
        return -1  # alive, started by someone else: usable, but not ours to stop

    def ensure(self) -> list[str]:
        return self.start()

    def start(self) -> list[str]:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self.client.alive():
                return []
            pid = self._adoptable()
            if pid is not None:
                self.pid = pid if pid > 0 else None
                log.info("%s: adopting running wireguard-go (pid %s)", self.name, self.pid)
                return []
            self._spawn()
            return [f"start wireguard-go for {self.name} (pid {self.pid})"]

    def _spawn(self) -> None:
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        binary = self.binary or find_wireguard_go()
        argv = _in_netns(self.netns, _private_mount(self.socket_dir, 'exec "$1" -f "$2"', binary, self.name))
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": self.log_level}
        with open(self.log_file, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._proc, self.pid = proc, proc.pid
        deadline = time.monotonic() + self.start_timeout
        while not self.client.alive():
            if proc.poll() is not None or time.monotonic() > deadline:
                self._terminate()
                tail = open(self.log_file, errors="replace").read()[-500:].strip()
                raise DeviceError(f"wireguard-go for {self.name} did not come up: {tail or 'no output'}")
            time.sleep(0.01)
        with open(self.pid_file, "w") as f:
            f.write(f"{proc.pid}\n")
        log.info("%s: started wireguard-go (pid %d)", self.name, proc.pid)

    def _running(self) -> bool:
        if self._proc is not None:
            if self._proc.poll() is not None:
                return False
        elif self.pid is not None and not _pid_alive(self.pid):
            return False
        return self.client.alive()

    def _terminate(self) -> None:
        pid, proc = self.pid, self._proc
        self.pid, self._proc = None, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _pid_alive(pid):
                return
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if proc is not None:
            proc.wait()

    # -- supervision

    def supervise(self, interval: float = 0.5) -> None:
        """Check every ``interval`` seconds that wireguard-go runs; restart and restore it if not."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(interval,),
                                        name=f"wireguard-go {self.name}", daemon=True)
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    if self._stop.is_set() or self._running():
                        continue
                    self.restart()
            except Exception as e:  # noqa: BLE001  (keep supervising; try again next round)
                log.error("%s: restarting wireguard-go failed: %s", self.name, e)
                continue
            if self.on_restart is not None:
                try:
                    self.on_restart()
                except Exception as e:  # noqa: BLE001
                    log.error("%s: on_restart failed: %s", self.name, e)

    def restart(self) -> list[str]:
        """Start wireguard-go again and put back the last link settings and config."""
        with self._lock:
            log.warning("%s: wireguard-go is not running; restarting it", self.name)
            self._terminate()
            self._spawn()
            self.restarts += 1
            changes = [f"restart wireguard-go for {self.name} (pid {self.pid})"]
            if self._link is not None:
                changes += configure_link(self.name, *self._link, netns=self.netns)
            if self._conf is not None:
                changes += self.apply(self._conf)
            return changes

    def close(self, remove: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not remove:
            return
        with self._lock:
            if self.pid is None and self._proc is None:
                pid = self._adoptable()
                self.pid = pid if pid and pid > 0 else None
            self._terminate()
            for f in (self.pid_file, self.log_file):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.socket_dir)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise

    # -- config

    def _get(self) -> DeviceState:
        return self.client.get()

    def _set(self, update: DeviceUpdate) -> None:
        self.client.set(update)


def kernel_available(name: str, netns: str | None = None) -> bool:
    """Whether ``name`` is (or can be created as) a kernel WireGuard link; a probe link is removed."""
    kind = link_kind(name, netns)
    if kind is not None:
        return kind == "wireguard"
    try:
        with _iproute(netns) as ipr:
            ipr.link("add", ifname=name, kind="wireguard")
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        return True
    except Exception as e:  # noqa: BLE001  (EOPNOTSUPP, a missing module, a denied request)
        log.info("no kernel WireGuard (%s); using wireguard-go", e)
        return False


def open_device(name: str, mode: Mode | str = Mode.AUTO, netns: str | None = None,
                **userspace: Any) -> Device:
    """A Device for ``name``: the kernel's if ``mode`` is kernel (or auto and it works), else wireguard-go."""
    mode = Mode(mode)
    if mode is Mode.AUTO:
        mode = Mode.KERNEL if kernel_available(name, netns) else Mode.USERSPACE
    if mode is Mode.KERNEL:
        return KernelDevice(name, netns)
    return UserspaceDevice(name, netns=netns, **userspace)
