"""The WireGuard device of a node: create it, keep it alive, and make its config match a WgConf.

Two implementations sit behind one interface (``Device``), each in a module of its own:

- ``UserspaceDevice`` (``wg_userspace``) starts ``wireguard-go`` in the current (or a named)
  network namespace and supervises it: if the process dies it is started again and the last link
  settings and config are put back, then ``on_restart`` is called so the caller can restore its
  routes. wireguard-go always puts its UAPI socket in ``/var/run/wireguard``, a directory every
  network namespace of the machine shares, so two nodes' ``kilo0`` would clash there. Each
  process is therefore started in a private mount namespace (``unshare --mount``) with a
  directory of our own bind-mounted over ``/var/run/wireguard``; by default
  ``/run/kilo/wireguard/net-<inode of the netns>``, so one network namespace always maps to the
  same directory and a restarted agent finds (and adopts) the running process instead of
  starting a new one. ``wg_argv`` builds a ``wg`` command line that sees that directory.
- ``KernelDevice`` (``wg_kernel``) creates a ``type wireguard`` link and configures it over
  generic netlink. It is a thin adapter that cannot be exercised on machines without the kernel
  module (such as the ones this project is tested on); it shares the diffing logic (``diff``)
  with the userspace path.

``open_device`` picks one (``Mode.AUTO``: the kernel's if a ``wireguard`` link can be made).
``Device.apply(conf)`` diffs the device's current state against the desired ``WgConf`` and sends
only the differences: an unchanged peer is never named in an update, so its session and last
handshake survive. ``Device.apply(conf, previous)`` does the same from the config last applied
instead of the device's state (``diff_confs``: nothing is read). Both return a list of
human-readable changes (``[]`` when nothing differed).
"""

from __future__ import annotations

import abc
import enum
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pyroute2.iproute import IPRoute

from kilo import syntax
from kilo.keys import Key, is_zero
from kilo.model import Endpoint, Prefix, UdpAddress, format_udp
from kilo.wgstate import DeviceState, DeviceUpdate, PeerState, PeerUpdate
from kilo.wireguard import WgConf, WgPeer

log = logging.getLogger(__name__)

IFF_UP = 0x1

Resolver = Callable[[Endpoint], UdpAddress | None]


class Mode(str, enum.Enum):
    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


class DeviceError(RuntimeError):
    """The device could not be created, started or configured; the message says why, and
    ``changes`` what was done before (the parts that were applied)."""

    def __init__(self, message: str, changes: list[str] | None = None) -> None:
        super().__init__(message)
        self.changes = changes or []


# ---------------------------------------------------------------------------- diffing (pure)


def resolve_endpoint(ep: Endpoint) -> UdpAddress | None:
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


def _peer_update(want: WgPeer, endpoint: UdpAddress | None) -> PeerUpdate:
    return PeerUpdate(
        public_key=want.public_key,
        preshared_key=want.preshared_key or Key.zero(),
        endpoint=endpoint,
        persistent_keepalive=want.persistent_keepalive,
        replace_allowed_ips=True,
        allowed_ips=list(want.allowed_ips),
    )


def _diff_peer(
    have: PeerState, want: WgPeer, endpoint: UdpAddress | None
) -> tuple[PeerUpdate | None, list[str]]:
    up = PeerUpdate(public_key=want.public_key, update_only=True)
    what: list[str] = []
    want_psk = None if is_zero(want.preshared_key) else want.preshared_key
    if want_psk != have.preshared_key:
        up.preshared_key = want_psk or Key.zero()
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


def _ep(ep: UdpAddress | None) -> str:
    return "none" if ep is None else format_udp(ep)


def diff(
    current: DeviceState, desired: WgConf, resolve: Resolver = resolve_endpoint
) -> tuple[DeviceUpdate, list[str]]:
    """The smallest update that turns ``current`` into ``desired``, and what it changes.

    ``desired.private_key is None`` leaves the private key and port alone; so does a ``None``
    listen port. A desired peer without a (resolvable) endpoint keeps whatever endpoint the device
    has, learned from the peer's packets (WireGuard cannot unset an endpoint).
    """
    up = DeviceUpdate()
    changes: list[str] = []
    if desired.private_key is not None and desired.private_key != (
        current.private_key or Key.zero()
    ):
        up.private_key = desired.private_key
        changes.append("set private key")
    if desired.listen_port is not None and desired.listen_port != current.listen_port:
        up.listen_port = desired.listen_port
        changes.append(f"set listen port {current.listen_port} -> {desired.listen_port}")
    wanted: dict[Key, WgPeer] = {}
    for p in desired.peers:
        wanted[p.public_key] = p
    for key, want in wanted.items():
        endpoint = resolve(want.endpoint) if want.endpoint is not None else None
        have = current.peers.get(key)
        if have is None:
            up.peers.append(_peer_update(want, endpoint))
            changes.append(
                f"add peer {key} (endpoint {_ep(endpoint)}, allowed IPs "
                + ",".join(str(a.network) for a in want.allowed_ips)
                + ")"
            )
            continue
        pu, what = _diff_peer(have, want, endpoint)
        if pu is not None:
            up.peers.append(pu)
            changes.append(f"update peer {key}: " + "; ".join(what))
    for key in current.peers:
        if key not in wanted:
            up.peers.append(PeerUpdate(public_key=key, remove=True))
            changes.append(f"remove peer {key}")
    return up, changes


def diff_confs(
    previous: WgConf, desired: WgConf, resolve: Resolver = resolve_endpoint
) -> tuple[DeviceUpdate, list[str]]:
    """The update that turns a device holding ``previous`` (as applied last) into one holding
    ``desired``, computed from the two configs alone (the device is not read).

    Only peers that are new, gone or different are named; a changed peer is set in full
    (without ``update_only``, so one that went missing from the device comes back), and an
    unchanged one keeps its session. Endpoints are resolved for the named peers only.
    """
    up = DeviceUpdate()
    changes: list[str] = []
    if desired.private_key is not None and desired.private_key != previous.private_key:
        up.private_key = desired.private_key
        changes.append("set private key")
    if desired.listen_port is not None and desired.listen_port != previous.listen_port:
        up.listen_port = desired.listen_port
        changes.append(f"set listen port {previous.listen_port} -> {desired.listen_port}")
    before = {p.public_key: p for p in previous.peers}
    wanted: dict[Key, WgPeer] = {}
    for p in desired.peers:
        wanted[p.public_key] = p
    for key, want in wanted.items():
        had = before.get(key)
        if had == want:
            continue
        endpoint = resolve(want.endpoint) if want.endpoint is not None else None
        update = _peer_update(want, endpoint)
        if update.persistent_keepalive is None:
            update.persistent_keepalive = 0  # off, also if it was on
        up.peers.append(update)
        if had is None:
            changes.append(
                f"add peer {key} (endpoint {_ep(endpoint)}, allowed IPs "
                + ",".join(str(a.network) for a in want.allowed_ips)
                + ")"
            )
        else:
            changes.append(f"update peer {key}: " + "; ".join(_what_changed(had, want)))
    for key in before:
        if key not in wanted:
            up.peers.append(PeerUpdate(public_key=key, remove=True))
            changes.append(f"remove peer {key}")
    return up, changes


def _what_changed(had: WgPeer, want: WgPeer) -> list[str]:
    what = []
    if had.preshared_key != want.preshared_key:
        what.append("preshared key")
    if had.endpoint != want.endpoint:
        what.append(f"endpoint {had.endpoint or 'none'} -> {want.endpoint or 'none'}")
    if had.persistent_keepalive != want.persistent_keepalive:
        what.append(f"keepalive {had.persistent_keepalive} -> {want.persistent_keepalive}")
    if _nets(had.allowed_ips) != _nets(want.allowed_ips) or not what:
        what.append("allowed IPs " + ",".join(sorted(_nets(want.allowed_ips))))
    return what


# ---------------------------------------------------------------------------- links


def _iproute(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


def link_kind(name: str, netns: str | None = None) -> str | None:
    """``"wireguard"``, ``"tun"``... for an existing link, ``""`` if it has no kind, None if
    absent."""
    with _iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def configure_link(
    name: str, addresses: Sequence[Prefix], mtu: int | None, netns: str | None = None
) -> list[str]:
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
        # Remove first: deleting the primary address of a subnet also deletes the secondary
        # ones in it, so a new address added before the old one goes would go with it.
        for key, (addr, plen) in have.items():
            if key not in want:
                ipr.addr("del", index=index, address=addr, prefixlen=plen)
                changes.append(f"remove address {key} from {name}")
        for key, a in want.items():
            if key not in have:
                ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
                changes.append(f"add address {key} to {name}")
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")
            changes.append(f"set {name} up")
    return changes


# ---------------------------------------------------------------------------- devices


class Device(abc.ABC):
    """A WireGuard interface ``name`` in ``netns`` (None: the current network namespace)."""

    mode: Mode

    def __init__(
        self, name: str, netns: str | None = None, resolve: Resolver = resolve_endpoint
    ) -> None:
        self.name = name
        self.netns = netns
        self.resolve = resolve
        self._lock = threading.RLock()
        self._conf: WgConf | None = None
        self._link: tuple[list[Prefix], int | None] | None = None

    @abc.abstractmethod
    def ensure(self) -> list[str]:
        """Create the device if it is missing (for wireguard-go: start it, or adopt a running
        one)."""

    @abc.abstractmethod
    def close(self, remove: bool = True) -> None:
        """Stop managing; with ``remove`` also delete the device (stop wireguard-go)."""

    def supervise(self, on_restart: Callable[[], None] | None = None) -> None:  # noqa: B027
        """Watch the device and call ``on_restart`` after restoring it (wireguard-go only; the
        kernel's device needs no supervisor)."""

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

    def apply(self, desired: WgConf, previous: WgConf | None = None) -> list[str]:
        """Make the device's config match ``desired``, touching only what differs: with
        ``previous`` (the config last applied in full), the difference of the two configs is
        sent without reading the device; without, the device is read and compared."""
        with self._lock:
            self._conf = desired
            if previous is not None:
                up, changes = diff_confs(previous, desired, self.resolve)
            else:
                up, changes = diff(self._get(), desired, self.resolve)
            failures = self._set_each(up) if not up.empty() else []
            for c in changes:
                log.info("%s: %s", self.name, c)
            if failures:
                raise DeviceError(f"{self.name}: " + "; ".join(failures), changes)
            return changes

    def _set_each(self, up: DeviceUpdate) -> list[str]:
        """Send ``up``; a peer whose values could carry syntax is left out, and when the
        device refuses the update as a whole, each part is sent on its own, so that one bad
        peer never keeps the others from the device. The failures, as sentences."""
        failures: list[str] = []
        safe: list[PeerUpdate] = []
        for p in up.peers:
            try:
                syntax.peer_update(p)
                safe.append(p)
            except syntax.UnsafeValue as e:
                failures.append(f"peer {p.public_key} refused: {e}")
        whole = replace(up, peers=safe)
        if whole.empty():
            return failures
        try:
            self._set(whole)
            return failures
        except Exception as e:  # noqa: BLE001 - retried part by part below
            log.warning(
                "%s: the device refused the update (%s); sending it part by part", self.name, e
            )
        parts = [replace(whole, peers=[])] if not replace(whole, peers=[]).empty() else []
        parts += [DeviceUpdate(peers=[p]) for p in safe]
        for part in parts:
            try:
                self._set(part)
            except Exception as e:  # noqa: BLE001 - per item: one never stops the rest
                what = f"peer {part.peers[0].public_key}" if part.peers else "device settings"
                failures.append(f"{what}: {e}")
        return failures

    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]:
        """Set the interface's addresses and MTU and bring it up (remembered for restarts)."""
        with self._lock:
            self._link = (list(addresses), mtu)
            return configure_link(self.name, addresses, mtu, self.netns)


def kernel_available(name: str, netns: str | None = None) -> bool:
    """Whether ``name`` is (or can be created as) a kernel WireGuard link; a probe link is
    removed."""
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


def open_device(
    name: str, mode: Mode | str = Mode.AUTO, netns: str | None = None, **userspace: Any
) -> Device:
    """A Device for ``name``: the kernel's if ``mode`` is kernel (or auto and it works), else
    wireguard-go."""
    mode = Mode(mode)
    if mode is Mode.AUTO:
        mode = Mode.KERNEL if kernel_available(name, netns) else Mode.USERSPACE
    if mode is Mode.KERNEL:
        from kilo.dataplane.wg_kernel import KernelDevice

        return KernelDevice(name, netns)
    from kilo.dataplane.wg_userspace import UserspaceDevice

    return UserspaceDevice(name, netns=netns, **userspace)
