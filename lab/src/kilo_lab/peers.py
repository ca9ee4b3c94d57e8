"""A lab peer namespace made a WireGuard peer of a cluster, as its owner would do it: a key
pair, a ``Peer`` object (``kilo.translate.peer_object``), wireguard-go configured from what
``kgctl showconf peer`` printed plus its own ``[Interface]`` (``kilo.wireguard.WgConf``), its
WireGuard address and a route for every allowed IP."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from kilo.keys import Key
from kilo.model import Endpoint
from kilo.translate import peer_object
from kilo.wireguard import WgConf

from kilo_lab import netns, procs, wgtool
from kilo_lab.errors import LabError
from kilo_lab.lab import Lab

WG_IFACE = "wg0"  # the peers' WireGuard interface
WG_PORT = 51820
KEEPALIVE = 10


@dataclass
class PeerHost:
    """A lab peer namespace turned into a WireGuard peer of a cluster."""

    host: str  # the lab's peer (namespace) name
    peer: str  # the Peer object's name
    address: str  # its WireGuard address (prefix)
    private_key: Key = field(default_factory=Key.generate)
    process: subprocess.Popen[bytes] | None = None  # its wireguard-go
    routes: list[str] = field(default_factory=list)

    @property
    def public_key(self) -> Key:
        return self.private_key.public()

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def public_ip(lab: Lab, host: str, ipv6: bool = False) -> str:
    """The peer's public address (``ipv6``: its IPv6 one, of ``ipv6: true``)."""
    for p in lab.spec.peers:
        if p.name == host:
            if ipv6 and p.public_ip6 is None:
                raise LabError(f"peer {host!r} has no IPv6 address (ipv6: true)")
            return str(p.public_ip6 if ipv6 else p.public_ip)
    raise LabError(f"no peer {host!r} in the lab")


def peer_manifest(lab: Lab, ph: PeerHost, endpoint: bool, ipv6: bool = False) -> dict[str, Any]:
    """The Peer object for ``ph`` (with its public address as endpoint if ``endpoint``; its
    IPv6 one if ``ipv6``)."""
    ep = (
        Endpoint(port=WG_PORT, ip=ipaddress.ip_address(public_ip(lab, ph.host, ipv6)))
        if endpoint
        else None
    )
    return peer_object(
        ph.peer,
        ph.public_key,
        [ipaddress.ip_interface(ph.address)],
        ep,
        persistent_keepalive=KEEPALIVE,
    )


def device_conf(ph: PeerHost, showconf: WgConf) -> WgConf:
    """The peer's whole device config: its ``[Interface]`` and kgctl's ``[Peer]`` sections."""
    return WgConf(private_key=ph.private_key, listen_port=WG_PORT, peers=showconf.peers)


def socket_dir(lab: Lab, ph: PeerHost) -> str:
    return str(lab.paths.peer_dir(ph.host) / "wireguard")


def start_device(lab: Lab, ph: PeerHost) -> None:
    """wireguard-go ``wg0`` in the peer's namespace (recorded, so teardown stops it too)."""
    ph.process = wgtool.start_wireguard_go(
        lab.ns(ph.host), lab.paths.peer_dir(ph.host) / "wireguard", WG_IFACE
    )
    lab.store.add_process(f"wireguard-go/{ph.host}", ph.process.pid, ph.host)


def setconf(lab: Lab, ph: PeerHost, conf: WgConf) -> str:
    """``wg setconf wg0 FILE`` with ``conf`` written (0600) to the peer's directory; the file."""
    path = lab.paths.peer_dir(ph.host) / f"{WG_IFACE}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(conf.render())
    argv = wgtool.wg_argv(lab.ns(ph.host), socket_dir(lab, ph), "setconf", WG_IFACE, str(path))
    out = netns.run(argv, check=False)
    if out.returncode != 0:
        raise LabError(f"wg setconf: {out.stderr.strip()}")
    return str(path)


def stop_device(lab: Lab, ph: PeerHost) -> None:
    if ph.process is not None:
        procs.stop([ph.process])
        lab.store.remove_process(f"wireguard-go/{ph.host}")
        ph.process = None


def link_script(ph: PeerHost) -> str:
    """The shell commands that give ``wg0`` the peer's address, bring it up and route each of
    ``ph.routes`` through it."""
    dev = WG_IFACE
    return (
        f"ip address add {ph.address} dev {dev} && ip link set {dev} up && "
        f"for ip in {' '.join(ph.routes)}; do ip route replace $ip dev {dev}; done"
    )


def configure(lab: Lab, ph: PeerHost, shown: WgConf) -> list[str]:
    """All of it, quietly: wireguard-go, ``shown`` (what ``kgctl showconf peer`` printed) with
    the peer's own ``[Interface]``, address, link and routes; returns the routed prefixes."""
    start_device(lab, ph)
    setconf(lab, ph, device_conf(ph, shown))
    ph.routes = routes_of(shown)
    lab.exec(ph.host, ["sh", "-c", link_script(ph)], check=True)
    return ph.routes


def routes_of(shown: WgConf) -> list[str]:
    """The prefixes a peer routes through its tunnel: every allowed IP, in address order."""
    nets = {a.network for p in shown.peers for a in p.allowed_ips}
    return [str(n) for n in sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen))]
