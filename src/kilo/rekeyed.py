"""Peers whose key changed (a rotation elsewhere): where to send one packet so that the device
starts the handshake with the new key at once.

A node that rotates its key expires its sessions and starts a handshake that its peers drop
until they hold its new public key; WireGuard retries an initiation only after 5 s
(REKEY_TIMEOUT). The peer that takes the new key has a fresh peer entry with no session, and
its first packet towards it starts a handshake that succeeds. So the agent, after applying a
device configuration in which a peer's key replaced another on the same allowed IPs, sends one
datagram into the tunnel (``Host.nudge``); the traffic across then resumes with the propagation
time instead of up to 5 s later.
"""

from __future__ import annotations

from kilo.model import IPAddress
from kilo.wireguard import WgConf, WgPeer


def _target(peer: WgPeer) -> IPAddress | None:
    """An address the device routes to ``peer``: a host allowed IP if there is one (the node's
    WireGuard IP), else the first address of its first allowed IP."""
    for p in peer.allowed_ips:
        if p.network.num_addresses == 1:
            return p.ip
    for p in peer.allowed_ips:
        if p.network.num_addresses > 2:
            return p.network.network_address + 1
    return None


def rekeyed(before: WgConf | None, after: WgConf) -> list[IPAddress]:
    """Addresses of the peers of ``after`` whose public key is new but whose allowed IPs an
    old peer of ``before`` held: a key change, not a new peer (which starts no earlier)."""
    if before is None:
        return []
    old_keys = {bytes(p.public_key) for p in before.peers}
    old_ips = {str(ip.network) for p in before.peers for ip in p.allowed_ips}
    out: list[IPAddress] = []
    for p in after.peers:
        if bytes(p.public_key) in old_keys:
            continue
        if any(str(ip.network) in old_ips for ip in p.allowed_ips):
            t = _target(p)
            if t is not None:
                out.append(t)
    return out
