"""WireGuard configuration in the INI form Kilo prints (``kgctl showconf``) and ``wg`` reads.

Rendering follows Kilo's layout exactly: ``[Interface]`` with ``PrivateKey`` (omitted when zero)
and ``ListenPort``; each ``[Peer]`` with ``AllowedIPs``, ``Endpoint``, ``PersistentKeepalive``
(always), ``PresharedKey`` and ``PublicKey`` (omitted when zero), sections separated by a blank
line. Parsing accepts that form and the one ``wg showconf`` prints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kilo import syntax
from kilo.keys import Key, is_zero
from kilo.model import Endpoint, Prefix, parse_endpoint


@dataclass
class WgPeer:
    public_key: Key
    allowed_ips: list[Prefix] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    preshared_key: Key | None = None

    def deduplicate_ips(self) -> None:
        seen: set[str] = set()
        out: list[Prefix] = []
        for ip in self.allowed_ips:
            if str(ip) not in seen:
                seen.add(str(ip))
                out.append(ip)
        self.allowed_ips = out


@dataclass
class WgConf:
    """A device configuration; ``private_key is None`` means no ``[Interface]`` section."""

    private_key: Key | None = None
    listen_port: int | None = None
    peers: list[WgPeer] = field(default_factory=list)

    def render(self) -> str:
        """The INI text; ``kilo.syntax.UnsafeValue`` for a value that could carry syntax."""
        out: list[str] = []
        if self.private_key is not None:
            out.append("[Interface]\n")
            if not is_zero(self.private_key):
                out.append(f"PrivateKey = {self.private_key}\n")
            port = syntax.number(self.listen_port or 0, 0, syntax.MAX_PORT, "listen port")
            out.append(f"ListenPort = {port}\n")
        for i, p in enumerate(self.peers):
            if i > 0 or self.private_key is not None:
                out.append("\n")
            out.append("[Peer]\n")
            if p.allowed_ips:
                ips = ", ".join(syntax.prefix(a, "allowed IP") for a in p.allowed_ips)
                out.append(f"AllowedIPs = {ips}\n")
            ep = "" if p.endpoint is None else syntax.endpoint(p.endpoint)
            if ep:
                out.append(f"Endpoint = {ep}\n")
            keepalive = syntax.number(
                p.persistent_keepalive, 0, syntax.MAX_KEEPALIVE, "persistent keepalive"
            )
            out.append(f"PersistentKeepalive = {keepalive}\n")
            if not is_zero(p.preshared_key):
                out.append(f"PresharedKey = {p.preshared_key}\n")
            if not is_zero(p.public_key):
                out.append(f"PublicKey = {p.public_key}\n")
        return "".join(out)


class ConfigError(ValueError):
    """A WireGuard INI text that cannot be read; the message names the line."""


def parse(text: str) -> WgConf:
    conf = WgConf()
    current: WgPeer | None = None
    section = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section == "interface":
                conf.private_key = conf.private_key or Key.zero()
            elif section == "peer":
                current = WgPeer(public_key=Key.zero())
                conf.peers.append(current)
            else:
                raise ConfigError(f"line {n}: unknown section {line!r}")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"line {n}: expected 'Key = Value', got {raw!r}")
        key, value = key.strip().lower(), value.strip()
        try:
            if section == "interface":
                if key == "privatekey":
                    conf.private_key = Key.parse(value)
                elif key == "listenport":
                    conf.listen_port = int(value)
                elif key in ("fwmark", "address", "dns", "mtu", "table"):
                    pass  # wg-quick and fwmark settings are not part of Kilo's configs
                else:
                    raise ConfigError(f"line {n}: unknown interface key {key!r}")
            elif section == "peer" and current is not None:
                if key == "publickey":
                    current.public_key = Key.parse(value)
                elif key == "presharedkey":
                    current.preshared_key = Key.parse(value)
                elif key == "allowedips":
                    current.allowed_ips.extend(
                        ipaddress.ip_interface(a.strip()) for a in value.split(",") if a.strip()
                    )
                elif key == "endpoint":
                    current.endpoint = parse_endpoint(value)
                elif key == "persistentkeepalive":
                    current.persistent_keepalive = 0 if value == "off" else int(value)
                else:
                    raise ConfigError(f"line {n}: unknown peer key {key!r}")
            else:
                raise ConfigError(f"line {n}: {key!r} outside a section")
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"line {n}: {e}") from None
    return conf
