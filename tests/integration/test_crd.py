"""The Peer CRD: the API server itself rejects invalid Peers and keeps valid ones as given."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kilo_lab.controlplane import ControlPlane

pytestmark = pytest.mark.integration

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # 32 bytes
KEY2 = "8J+Ri/CfkYvwn5GL8J+Ri/CfkYvwn5GL8J+Ri/CfkYs="
BASE: dict[str, Any] = {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY}


def with_(**changes: Any) -> dict[str, Any]:
    spec = dict(BASE)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def endpoint(port: Any = 51820, **dns_or_ip: str) -> dict[str, Any]:
    return {"dnsOrIP": dns_or_ip, "port": port}


def peer(name: str, spec: dict[str, Any] | None) -> str:
    obj: dict[str, Any] = {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
    }
    if spec is not None:
        obj["spec"] = spec
    return json.dumps(obj)


# (case id, spec, the field the error must name)
INVALID: list[tuple[str, dict[str, Any] | None, str]] = [
    ("no-spec", None, "spec"),
    ("cidr-prefix-too-long", with_(allowedIPs=["10.5.0.1/33"]), "spec.allowedIPs[0]"),
    ("cidr-garbage", with_(allowedIPs=["10.5.0.0/24", "not-a-cidr"]), "spec.allowedIPs[1]"),
    ("cidr-without-length", with_(allowedIPs=["10.5.0.1"]), "spec.allowedIPs[0]"),
    ("cidr-leading-zero", with_(allowedIPs=["010.5.0.1/32"]), "spec.allowedIPs[0]"),
    ("cidr-ipv6-bad", with_(allowedIPs=["fd00::1::2/128"]), "spec.allowedIPs[0]"),
    ("allowed-ips-empty", with_(allowedIPs=[]), "spec.allowedIPs"),
    ("allowed-ips-missing", with_(allowedIPs=None), "spec.allowedIPs"),
    ("public-key-missing", with_(publicKey=None), "spec.publicKey"),
    ("public-key-31-bytes", with_(publicKey=KEY[:40] + "eA=="), "spec.publicKey"),
    ("public-key-33-bytes", with_(publicKey=KEY[:43] + "AAAA"), "spec.publicKey"),
    ("public-key-not-base64", with_(publicKey="!" * 43 + "="), "spec.publicKey"),
    ("public-key-bad-padding-bits", with_(publicKey=KEY[:42] + "B="), "spec.publicKey"),
    ("public-key-empty", with_(publicKey=""), "spec.publicKey"),
    ("preshared-key-short", with_(presharedKey="c2hvcnQ="), "spec.presharedKey"),
    ("port-zero", with_(endpoint=endpoint(0, ip="192.0.2.1")), "spec.endpoint.port"),
    ("port-70000", with_(endpoint=endpoint(70000, ip="192.0.2.1")), "spec.endpoint.port"),
    ("port-missing", with_(endpoint={"dnsOrIP": {"ip": "192.0.2.1"}}), "spec.endpoint.port"),
    ("keepalive-negative", with_(persistentKeepalive=-1), "spec.persistentKeepalive"),
    ("keepalive-not-integer", with_(persistentKeepalive="25s"), "spec.persistentKeepalive"),
    (
        "dns-underscore",
        with_(endpoint=endpoint(dns="bad_name.example.com")),
        "spec.endpoint.dnsOrIP.dns",
    ),
    (
        "dns-upper-case",
        with_(endpoint=endpoint(dns="Peer.Example.com")),
        "spec.endpoint.dnsOrIP.dns",
    ),
    (
        "dns-leading-dash",
        with_(endpoint=endpoint(dns="-peer.example.com")),
        "spec.endpoint.dnsOrIP.dns",
    ),
    ("ip-out-of-range", with_(endpoint=endpoint(ip="203.0.113.300")), "spec.endpoint.dnsOrIP.ip"),
    ("ip-with-zone", with_(endpoint=endpoint(ip="fe80::1%eth0")), "spec.endpoint.dnsOrIP.ip"),
    ("neither-dns-nor-ip", with_(endpoint=endpoint()), "spec.endpoint.dnsOrIP"),
]

VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", with_()),
    ("host-bits-kept", with_(allowedIPs=["10.5.0.1/24", "10.6.0.0/16"])),
    ("ipv6", with_(allowedIPs=["fd00:5::1/128"], endpoint=endpoint(ip="2001:db8::7"))),
    ("ip-endpoint", with_(endpoint=endpoint(51820, ip="203.0.113.7"), persistentKeepalive=25)),
    ("dns-endpoint", with_(endpoint=endpoint(1, dns="peer-1.example.com"), persistentKeepalive=0)),
    ("preshared-key", with_(presharedKey=KEY2, endpoint=endpoint(65535, ip="198.51.100.4"))),
    ("empty-preshared-key", with_(presharedKey="")),
    # Kilo's own fixtures set both; its agent and ours use the DNS name then.
    ("dns-and-ip", with_(endpoint=endpoint(dns="peer.example.com", ip="203.0.113.7"))),
]


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("name,spec,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_peer_is_rejected(
    control_plane: ControlPlane, name: str, spec: dict[str, Any] | None, field: str
) -> None:
    result = control_plane.kubectl(
        "create", "-f", "-", input=peer(f"bad-{name}", spec), check=False
    )
    assert result.returncode != 0, f"accepted: {spec}"
    assert "is invalid" in result.stderr
    assert f"{field}:" in result.stderr, result.stderr
    missing = control_plane.kubectl("get", "peer", f"bad-{name}", check=False)
    assert missing.returncode != 0


@pytest.mark.parametrize("name,spec", VALID, ids=[c[0] for c in VALID])
def test_valid_peer_round_trips(
    control_plane: ControlPlane, name: str, spec: dict[str, Any]
) -> None:
    control_plane.kubectl("create", "-f", "-", input=peer(f"good-{name}", spec))
    try:
        got = json.loads(control_plane.kubectl("get", "peer", f"good-{name}", "-o", "json").stdout)
        assert got["spec"] == spec
    finally:
        control_plane.kubectl("delete", "peer", f"good-{name}", "--wait=false")
