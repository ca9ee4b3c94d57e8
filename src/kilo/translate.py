"""Kubernetes objects (plain dicts, as the API or ``kubectl get -o json|yaml`` gives them) to
the core model and back.

Reading never raises: a malformed value is read the way Kilo reads it (usually as absent) and a
``Problem`` names the object, the field, the value and why. The Kubernetes backend and the file
backend both use this module, so a live cluster and a saved dump read the same.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from kilo.keys import InvalidKey, Key, is_zero
from kilo.model import (
    REGION_LABEL,
    Endpoint,
    Granularity,
    Node,
    Peer,
    Prefix,
    Problem,
    endpoint_str,
    fast_v4_cidr,
    is_dns1123_subdomain,
    network_prefix,
    parse_endpoint,
)

ANNOTATION_PREFIX = "kilo.squat.ai/"
ENDPOINT = ANNOTATION_PREFIX + "endpoint"
FORCE_ENDPOINT = ANNOTATION_PREFIX + "force-endpoint"
FORCE_INTERNAL_IP = ANNOTATION_PREFIX + "force-internal-ip"
INTERNAL_IP = ANNOTATION_PREFIX + "internal-ip"
KEY = ANNOTATION_PREFIX + "key"
LAST_SEEN = ANNOTATION_PREFIX + "last-seen"
LEADER = ANNOTATION_PREFIX + "leader"
LOCATION = ANNOTATION_PREFIX + "location"
PERSISTENT_KEEPALIVE = ANNOTATION_PREFIX + "persistent-keepalive"
WIREGUARD_IP = ANNOTATION_PREFIX + "wireguard-ip"
DISCOVERED_ENDPOINTS = ANNOTATION_PREFIX + "discovered-endpoints"
ALLOWED_LOCATION_IPS = ANNOTATION_PREFIX + "allowed-location-ips"
GRANULARITY = ANNOTATION_PREFIX + "granularity"
CNI_COMPATIBILITY_IP = ANNOTATION_PREFIX + "cni-compatibility-ip"
#: Ours, not Kilo's: "lease" when the node's agent runs the native liveness mode (Leases).
LIVENESS = ANNOTATION_PREFIX + "liveness"
LEASE_LIVENESS = "lease"

#: The annotations the agent writes on its own node (and removes on clean-up).
OWNED_ANNOTATIONS = (
    ENDPOINT,
    INTERNAL_IP,
    KEY,
    LAST_SEEN,
    WIREGUARD_IP,
    DISCOVERED_ENDPOINTS,
    GRANULARITY,
    CNI_COMPATIBILITY_IP,
    LIVENESS,
)

PEER_API_VERSION = "kilo.squat.ai/v1alpha1"
PEER_KIND = "Peer"


def parse_cidr(text: str) -> Prefix:
    """A CIDR that keeps its host bits (Kilo's ``normalizeIP``); raises ValueError."""
    if "/" not in text:
        raise ValueError("not a CIDR (no prefix length)")
    fast = fast_v4_cidr(text)
    if fast is not None:
        return ipaddress.IPv4Interface(fast)
    return ipaddress.ip_interface(text)


class _Reader:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.problems: list[Problem] = []

    def problem(self, field: str, value: Any, reason: str) -> None:
        self.problems.append(Problem(self.kind, self.name, field, str(value), reason))


def node_from_object(
    obj: Mapping[str, Any], topology_label: str = REGION_LABEL
) -> tuple[Node, list[Problem]]:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    ann: Mapping[str, str] = meta.get("annotations") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    r = _Reader("Node", name)

    subnet = None
    pod_cidr = (obj.get("spec") or {}).get("podCIDR")
    if pod_cidr:
        try:
            subnet = network_prefix(pod_cidr)
        except ValueError as e:
            r.problem("spec.podCIDR", pod_cidr, f"not a CIDR: {e}")

    location = ann[LOCATION] if LOCATION in ann else labels.get(topology_label, "")

    def annotated(key: str, parse: Any, what: str) -> Any:
        if key not in ann or ann[key] == "":
            return None
        try:
            return parse(ann[key])
        except ValueError as e:
            r.problem(f"metadata.annotations[{key}]", ann[key], f"not {what}: {e}")
            return None

    endpoint = annotated(FORCE_ENDPOINT, parse_endpoint, "an endpoint") or annotated(
        ENDPOINT, parse_endpoint, "an endpoint"
    )
    internal_ip = None
    no_internal_ip = False
    if ann.get(FORCE_INTERNAL_IP) in ("", "-") and FORCE_INTERNAL_IP in ann:
        no_internal_ip = True
    else:
        internal_ip = annotated(FORCE_INTERNAL_IP, parse_cidr, "a CIDR") or annotated(
            INTERNAL_IP, parse_cidr, "a CIDR"
        )

    keepalive = 0
    if PERSISTENT_KEEPALIVE in ann:
        v = ann[PERSISTENT_KEEPALIVE]
        try:
            keepalive = int(v, 10)
        except ValueError:
            r.problem(
                f"metadata.annotations[{PERSISTENT_KEEPALIVE}]",
                v,
                "not an integer number of seconds",
            )
        if keepalive < 0:
            r.problem(f"metadata.annotations[{PERSISTENT_KEEPALIVE}]", v, "negative; read as 0")
            keepalive = 0

    last_seen = 0
    if LAST_SEEN in ann:
        try:
            last_seen = int(ann[LAST_SEEN], 10)
        except ValueError:
            r.problem(f"metadata.annotations[{LAST_SEEN}]", ann[LAST_SEEN], "not a Unix time")

    discovered: dict[str, Endpoint] | None = None
    if DISCOVERED_ENDPOINTS in ann and ann[DISCOVERED_ENDPOINTS] != "":
        discovered = _discovered_endpoints(ann[DISCOVERED_ENDPOINTS], r)

    allowed_location_ips: list[Prefix] = []
    if ALLOWED_LOCATION_IPS in ann:
        for part in ann[ALLOWED_LOCATION_IPS].split(","):
            try:
                allowed_location_ips.append(parse_cidr(part))
            except ValueError as e:
                r.problem(f"metadata.annotations[{ALLOWED_LOCATION_IPS}]", part, f"not a CIDR: {e}")

    granularity = None
    if GRANULARITY in ann:
        g = ann[GRANULARITY]
        if g in (Granularity.LOCATION.value, Granularity.FULL.value, Granularity.CROSS.value):
            granularity = Granularity(g)
        elif g != "":
            r.problem(f"metadata.annotations[{GRANULARITY}]", g, "not one of location, full, cross")

    key = None
    if ann.get(KEY):
        try:
            key = Key.parse(ann[KEY])
        except InvalidKey as e:
            r.problem(f"metadata.annotations[{KEY}]", ann[KEY], f"not a WireGuard key: {e}")

    node = Node(
        name=name,
        endpoint=endpoint,
        key=key,
        no_internal_ip=no_internal_ip,
        internal_ip=internal_ip,
        cni_compatibility_ip=annotated(CNI_COMPATIBILITY_IP, parse_cidr, "a CIDR"),
        last_seen=last_seen,
        leader=LEADER in ann,
        location=location,
        persistent_keepalive=keepalive,
        subnet=subnet,
        wireguard_ip=annotated(WIREGUARD_IP, parse_cidr, "a CIDR"),
        discovered_endpoints=discovered,
        allowed_location_ips=tuple(allowed_location_ips),
        granularity=granularity,
        lease_liveness=ann.get(LIVENESS) == LEASE_LIVENESS,
    )
    return node, r.problems


def _discovered_endpoints(text: str, r: _Reader) -> dict[str, Endpoint] | None:
    field = f"metadata.annotations[{DISCOVERED_ENDPOINTS}]"
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        out: dict[str, Endpoint] = {}
        for k, v in raw.items():
            if v is None:
                continue
            ip = ipaddress.ip_address(v["IP"])
            out[str(k)] = Endpoint(port=int(v["Port"]), ip=ip)
        return out
    except (ValueError, KeyError, TypeError) as e:
        r.problem(field, text, f"not a JSON map of public key to UDP address: {e}")
        return None


def discovered_endpoints_json(endpoints: Mapping[str, Endpoint]) -> str:
    """The annotation value, in the shape Go's ``json.Marshal(map[string]*net.UDPAddr)`` gives."""
    return json.dumps(
        {k: {"IP": str(e.ip), "Port": e.port, "Zone": ""} for k, e in sorted(endpoints.items())},
        separators=(",", ":"),
    )


def peer_validation_error(spec: Mapping[str, Any]) -> str | None:
    """Kilo's ``Peer.Validate``: the first reason the spec is invalid, or None."""
    for ip in spec.get("allowedIPs") or []:
        try:
            parse_cidr(str(ip))
        except ValueError as e:
            return f"spec.allowedIPs: {ip!r} is not a CIDR: {e}"
    ep = spec.get("endpoint")
    if ep is not None:
        d = ep.get("dnsOrIP") or {}
        dns, ip = d.get("dns") or "", d.get("ip") or ""
        if not dns and not ip:
            return "spec.endpoint.dnsOrIP: either a DNS name or an IP address must be given"
        if dns and not is_dns1123_subdomain(dns):
            return f"spec.endpoint.dnsOrIP.dns: {dns!r} is not a DNS-1123 subdomain"
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                return f"spec.endpoint.dnsOrIP.ip: {ip!r} is not an IP address"
        port = ep.get("port", 0)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            return f"spec.endpoint.port: {port!r} is not a UDP port number (1-65535)"
    pka = spec.get("persistentKeepalive", 0) or 0
    if not isinstance(pka, int) or pka < 0:
        return f"spec.persistentKeepalive: {pka!r} must be an integer >= 0"
    try:
        Key.parse(str(spec.get("publicKey", "")))
    except InvalidKey as e:
        return f"spec.publicKey: not a WireGuard key: {e}"
    return None


def peer_from_object(obj: Mapping[str, Any]) -> tuple[Peer | None, list[Problem]]:
    """A Peer, or None when Kilo would skip it as invalid (the problem says why)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    spec: Mapping[str, Any] = obj.get("spec") or {}
    r = _Reader("Peer", name)
    err = peer_validation_error(spec)
    if err is not None:
        field, _, reason = err.partition(": ")
        r.problem(field, _spec_value(spec, field), reason)
        return None, r.problems
    allowed = tuple(parse_cidr(str(a)) for a in spec.get("allowedIPs") or [])
    endpoint = None
    ep = spec.get("endpoint")
    if ep is not None and ep.get("port", 0) > 0:
        d = ep.get("dnsOrIP") or {}
        if d.get("ip"):
            endpoint = Endpoint(port=int(ep["port"]), ip=ipaddress.ip_address(d["ip"]))
        if d.get("dns"):
            endpoint = Endpoint(port=int(ep["port"]), dns=str(d["dns"]))
    psk = None
    if spec.get("presharedKey"):
        try:
            psk = Key.parse(str(spec["presharedKey"]))
        except InvalidKey as e:
            r.problem("spec.presharedKey", "<redacted>", f"not a WireGuard key: {e}; ignored")
    return (
        Peer(
            name=name,
            public_key=Key.parse(str(spec["publicKey"])),
            allowed_ips=allowed,
            endpoint=endpoint,
            persistent_keepalive=max(int(spec.get("persistentKeepalive") or 0), 0),
            preshared_key=psk,
        ),
        r.problems,
    )


def _spec_value(spec: Mapping[str, Any], field: str) -> Any:
    cur: Any = spec
    for part in field.removeprefix("spec.").split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def node_annotations(node: Node) -> dict[str, str]:
    """The annotations the agent publishes for its own node (Kilo's ``Set``)."""
    return {
        ENDPOINT: endpoint_str(node.endpoint),
        INTERNAL_IP: "" if node.internal_ip is None else str(node.internal_ip),
        KEY: _key_text(node.key),
        LAST_SEEN: str(node.last_seen),
        WIREGUARD_IP: "" if node.wireguard_ip is None else str(node.wireguard_ip),
        DISCOVERED_ENDPOINTS: ""
        if node.discovered_endpoints is None
        else discovered_endpoints_json(node.discovered_endpoints),
        GRANULARITY: "" if node.granularity is None else node.granularity.value,
        CNI_COMPATIBILITY_IP: ""
        if node.cni_compatibility_ip is None
        else str(node.cni_compatibility_ip),
    } | ({LIVENESS: LEASE_LIVENESS} if node.lease_liveness else {})


def _key_text(key: Key | None) -> str:
    """A key as the API holds it: base64, or "" for no key (or the zero key)."""
    return "" if is_zero(key) else str(key)


def peer_object(
    name: str,
    public_key: Key | None,
    allowed_ips: list[Prefix],
    endpoint: Endpoint | None,
    persistent_keepalive: int = 0,
    preshared_key: Key | None = None,
) -> dict[str, Any]:
    """A ``Peer`` object as kgctl's ``--as-peer -o yaml|json`` prints it (keys in Kilo's order)."""
    spec: dict[str, Any] = {"allowedIPs": [str(a) for a in allowed_ips]}
    if endpoint is not None:
        dns_or_ip: dict[str, str] = {}
        if endpoint.dns:
            dns_or_ip["dns"] = endpoint.dns
        elif endpoint.ip is not None:
            dns_or_ip["ip"] = str(endpoint.ip)
        spec["endpoint"] = {"dnsOrIP": dns_or_ip, "port": endpoint.port}
    if persistent_keepalive > 0:
        spec["persistentKeepalive"] = persistent_keepalive
    if not is_zero(preshared_key):
        spec["presharedKey"] = _key_text(preshared_key)
    spec["publicKey"] = _key_text(public_key)
    return {
        "apiVersion": PEER_API_VERSION,
        "kind": PEER_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
