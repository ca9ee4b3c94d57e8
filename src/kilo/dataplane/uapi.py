"""A client for WireGuard's cross-platform configuration protocol (the "UAPI").

A userspace implementation such as ``wireguard-go`` listens on a unix socket, by default
``/var/run/wireguard/IFACE.sock``. A request is ``get=1`` or ``set=1`` followed by ``key=value``
lines and a blank line; the answer ends with ``errno=N`` and a blank line. Keys travel as
lower-case hex. The protocol is described at https://www.wireguard.com/xplatform/.

``set`` is incremental: a peer that is not named in an update is left exactly as it is (its
session and handshake survive), which is what lets the device adapter change only what differs.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from kilo import syntax
from kilo.keys import Key
from kilo.model import UdpAddress, format_udp
from kilo.strict import Prefix
from kilo.wgstate import DeviceState, DeviceUpdate, PeerState, PeerUpdate

DEFAULT_SOCKET_DIR = "/var/run/wireguard"


def socket_path(iface: str, directory: str = DEFAULT_SOCKET_DIR) -> str:
    """Where a UAPI server for ``iface`` listens, given its socket directory."""
    return f"{directory.rstrip('/')}/{iface}.sock"


class UapiError(OSError):
    """The device refused a request (``errno`` is the device's error number) or did not answer."""


def parse_endpoint(text: str) -> UdpAddress:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").split("%", 1)[0]
    return ipaddress.ip_address(host), int(port)


@functools.lru_cache(maxsize=16384)
def _allowed_ip(value: str) -> Prefix:
    """An allowed IP as the device lists it; the same few thousand come back at every read
    (a device of 1,000 peers: parsing them anew was most of the read), and the values are
    immutable, so they are parsed once."""
    return ipaddress.ip_interface(value)


def _key(value: str) -> Key:
    """A key as the UAPI writes it: lower-case hex (``InvalidKey``, a ValueError, otherwise)."""
    return Key(bytes.fromhex(value))


def encode_set(update: DeviceUpdate) -> str:
    """The text of a ``set=1`` request, blank line included; a value that could carry syntax
    (``kilo.syntax``) is refused with ``UnsafeValue`` before anything is written."""
    lines = ["set=1"]
    if update.private_key is not None:
        lines.append(f"private_key={update.private_key.hex()}")
    if update.listen_port is not None:
        lines.append(f"listen_port={syntax.number(update.listen_port, 0, syntax.MAX_PORT, 'port')}")
    if update.fwmark is not None:
        lines.append(f"fwmark={syntax.number(update.fwmark, 0, syntax.MAX_FWMARK, 'fwmark')}")
    if update.replace_peers:
        lines.append("replace_peers=true")
    for p in update.peers:
        lines += _peer_lines(p)
    return "\n".join(lines) + "\n\n"


def _peer_lines(p: PeerUpdate) -> list[str]:
    syntax.peer_update(p)
    lines = [f"public_key={p.public_key.hex()}"]
    if p.remove:
        return [*lines, "remove=true"]
    if p.update_only:
        lines.append("update_only=true")
    if p.preshared_key is not None:
        lines.append(f"preshared_key={p.preshared_key.hex()}")
    if p.endpoint is not None:
        lines.append(f"endpoint={format_udp(p.endpoint)}")
    if p.persistent_keepalive is not None:
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
    if p.replace_allowed_ips:
        lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={a.network}" for a in p.allowed_ips]
    return lines


def parse_get(text: str) -> DeviceState:
    """The answer to ``get=1`` (without its ``errno`` line) as a DeviceState."""
    dev = DeviceState()
    peer: PeerState | None = None
    hs_sec = 0
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"bad UAPI line {line!r}")
        if key == "public_key":
            peer = PeerState(public_key=_key(value))
            dev.peers[peer.public_key] = peer
        elif peer is None:
            if key == "private_key":
                dev.private_key = _key(value)
            elif key == "listen_port":
                dev.listen_port = int(value)
            elif key == "fwmark":
                dev.fwmark = int(value)
        elif key == "preshared_key":
            k = _key(value)
            peer.preshared_key = None if k.is_zero() else k
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = int(value)
        elif key == "allowed_ip":
            peer.allowed_ips.append(_allowed_ip(value))
        elif key == "last_handshake_time_sec":
            hs_sec = int(value)
            peer.last_handshake = float(hs_sec)
        elif key == "last_handshake_time_nsec":
            peer.last_handshake = hs_sec + int(value) / 1e9 if hs_sec else 0.0
        elif key == "rx_bytes":
            peer.rx_bytes = int(value)
        elif key == "tx_bytes":
            peer.tx_bytes = int(value)
    return dev


class UapiClient:
    """Talks to one UAPI socket; each request uses a fresh connection."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _request(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
                s.sendall(text.encode())
                buf = b""
                while not (buf.endswith(b"\n\n") and b"errno=" in buf):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except OSError as e:
                raise UapiError(e.errno, f"UAPI {self.path}: {e.strerror or e}") from None
        body, _, tail = buf.decode().rstrip("\n").rpartition("errno=")
        if not tail.strip().lstrip("-").isdigit():
            raise UapiError(f"UAPI {self.path}: truncated answer")
        errno = int(tail)
        if errno != 0:
            raise UapiError(abs(errno), f"UAPI {self.path}: device returned errno={errno}")
        return body

    def get(self) -> DeviceState:
        return parse_get(self._request("get=1\n\n"))

    def set(self, update: DeviceUpdate) -> None:
        if not update.empty():
            self._request(encode_set(update))

    def alive(self) -> bool:
        """Whether a device answers on the socket: an empty ``set`` (changes nothing, answers
        ``errno=0``), not a ``get``, which would make the device print, and us read, every peer
        (at 1,000 peers, twice a second: most of an idle agent's and its device's CPU)."""
        try:
            self._request("set=1\n\n")
            return True
        except (UapiError, ValueError):
            return False
