"""The kernel's WireGuard: a ``type wireguard`` link configured over generic netlink.

A thin adapter behind ``Device``; it cannot be exercised on machines without the kernel module
(such as the ones this project is tested on). The diffing is shared with the userspace path.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from typing import Any

from kilo.dataplane.wgdevice import Device, DeviceError, Mode, _iproute, link_kind
from kilo.keys import Key
from kilo.wgstate import DeviceState, DeviceUpdate, PeerState

log = logging.getLogger(__name__)


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
        from pyroute2.netlink.generic.wireguard import WireGuard

        return WireGuard(netns=self.netns) if self.netns else WireGuard()

    def _get(self) -> DeviceState:
        dev = DeviceState()
        with self._wg() as wg:
            for msg in wg.info(self.name):
                k = _kernel_key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
                if k is not None and not k.is_zero():
                    dev.private_key = k
                dev.listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or dev.listen_port
                dev.fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or dev.fwmark
                for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    _merge_kernel_peer(dev, p)
        return dev

    def _set(self, update: DeviceUpdate) -> None:
        with self._wg() as wg:
            if (
                update.private_key is not None
                or update.listen_port is not None
                or update.fwmark is not None
            ):
                wg.set(
                    self.name,
                    listen_port=update.listen_port,
                    fwmark=update.fwmark,
                    private_key=None if update.private_key is None else str(update.private_key),
                )
            for p in update.peers:
                peer: dict[str, Any] = {"public_key": str(p.public_key)}
                if p.remove:
                    peer["remove"] = True
                else:
                    peer["update_only"] = p.update_only
                    if p.preshared_key is not None:
                        peer["preshared_key"] = str(p.preshared_key)
                    if p.endpoint is not None:
                        peer["endpoint_addr"], peer["endpoint_port"] = (
                            str(p.endpoint[0]),
                            p.endpoint[1],
                        )
                    if p.persistent_keepalive is not None:
                        peer["persistent_keepalive"] = p.persistent_keepalive
                    if p.replace_allowed_ips:
                        peer["replace_allowed_ips"] = True
                        peer["allowed_ips"] = [str(a.network) for a in p.allowed_ips]
                wg.set(self.name, peer=peer)


def _kernel_key(v: Any) -> Key | None:
    """pyroute2 decodes a key attribute to its base64 text (older versions: a dict with 'key')."""
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray, str)):
        return Key(base64.b64decode(v))
    return Key(bytes(v["key"]))


def _merge_kernel_peer(dev: DeviceState, p: Any) -> None:
    """Add one WGDEVICE_A_PEERS entry (a large device arrives in several messages)."""
    key = _kernel_key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
    if key is None:
        return
    st = dev.peers.setdefault(key, PeerState(public_key=key))
    psk = _kernel_key(p.get_attr("WGPEER_A_PRESHARED_KEY"))
    if psk is not None and not psk.is_zero():
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
