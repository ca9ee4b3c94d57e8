"""What a WireGuard device holds and how it is changed, as plain data (pure): the state a device
reports (``DeviceState``, ``PeerState``) and an incremental update (``DeviceUpdate``,
``PeerUpdate``), shared by the kernel and userspace adapters and by the plan's NAT discovery."""

from __future__ import annotations

from dataclasses import dataclass, field

from kilo.keys import Key
from kilo.model import Prefix, UdpAddress


@dataclass
class PeerState:
    """A peer as the device reports it, counters included."""

    public_key: Key
    preshared_key: Key | None = None
    endpoint: UdpAddress | None = None
    persistent_keepalive: int = 0
    allowed_ips: list[Prefix] = field(default_factory=list)
    last_handshake: float = 0.0  # seconds since the epoch; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class DeviceState:
    private_key: Key | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[Key, PeerState] = field(default_factory=dict)


@dataclass
class PeerUpdate:
    """One peer's part of a ``set``; ``None`` fields are left as they are on the device."""

    public_key: Key
    remove: bool = False
    update_only: bool = False
    preshared_key: Key | None = None  # the zero key clears it
    endpoint: UdpAddress | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[Prefix] = field(default_factory=list)


@dataclass
class DeviceUpdate:
    private_key: Key | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerUpdate] = field(default_factory=list)

    def empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and self.fwmark is None
            and not self.replace_peers
            and not self.peers
        )
