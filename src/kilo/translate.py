"""Kubernetes objects (plain dicts, as the API or ``kubectl get -o json|yaml`` gives them) to
the core model and back.

Reading never raises: a malformed value is read the way Kilo reads it (usually as absent) and a
``Problem`` names the object, the field, the value and why. The Kubernetes backend and the file
backend both use this module, so a live cluster and a saved dump read the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kilo import syntax
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
    is_dns1123_subdomain,
    parse_endpoint,
)
from kilo.strict import load_json, parse_cidr, parse_int, parse_ip, parse_network

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

_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")

#: The longest persistent keepalive WireGuard takes (a 16-bit number of seconds).
MAX_KEEPALIVE = 65535

PEER_API_VERSION = "kilo.squat.ai/v1alpha1"
PEER_KIND = "Peer"


class _Reader:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.problems: list[Problem] = []

    def problem(self, field: str, value: Any, reason: str) -> None:
        self.problems.append(Problem(self.kind, self.name, field, _shown(value), reason))


def _shown(value: Any) -> str:
    """A value as a problem shows it: as text, cut to a readable length."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 256 else text[:256] + f"… ({len(text)} characters)"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _name(obj: Any) -> str:
    name = _mapping(_mapping(obj).get("metadata")).get("name", "")
    return name if isinstance(name, str) else ""


def object_name(obj: Any) -> str:
    """The object's ``metadata.name``, or "" where there is none (never raises)."""
    return _name(obj)


def _strings(r: _Reader, value: Any, field: str) -> dict[str, str]:
    """A map of strings (annotations, labels): any other entry is a problem and dropped."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        r.problem(field, value, "not a map of strings; ignored")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(k, str) and isinstance(v, str):
            out[k] = v
        else:
            r.problem(f"{field}[{k}]", v, "not a string; ignored")
    return out


def node_from_object(
    obj: Any, topology_label: str = REGION_LABEL
) -> tuple[Node | None, list[Problem]]:
    """A Node as Kilo reads it (None when the object is no Node at all); every value that cannot
    be read is a problem and read as absent."""
    r = _Reader("Node", _name(obj))
    if not isinstance(obj, Mapping) or not r.name:
        r.problem("metadata.name", _mapping(obj).get("metadata"), "an object without a name")
        return None, r.problems
    try:
        return _node(obj, r, topology_label), r.problems
    except Exception as e:  # noqa: BLE001 - reading never raises: a problem instead
        r.problem("", "", f"unreadable: {type(e).__name__}: {e}")
        return None, r.problems


def _node(obj: Mapping[str, Any], r: _Reader, topology_label: str) -> Node:
    meta = _mapping(obj.get("metadata"))
    ann = _strings(r, meta.get("annotations"), "metadata.annotations")
    labels = _strings(r, meta.get("labels"), "metadata.labels")

    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, Mapping):
        r.problem("spec", spec, "not an object; ignored")
    subnet = None
    pod_cidr = _mapping(spec).get("podCIDR")
    if pod_cidr:
        try:
            subnet = parse_network(str(pod_cidr)) if isinstance(pod_cidr, str) else None
        except ValueError as e:
            r.problem("spec.podCIDR", pod_cidr, f"not a CIDR: {e}")
        if not isinstance(pod_cidr, str):
            r.problem("spec.podCIDR", pod_cidr, "not a string")

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
            keepalive = parse_int(v, 0, MAX_KEEPALIVE, "a number of seconds")
        except ValueError as e:
            r.problem(f"metadata.annotations[{PERSISTENT_KEEPALIVE}]", v, f"{e}; read as 0")

    last_seen = 0
    if LAST_SEEN in ann:
        try:
            last_seen = read_last_seen(ann[LAST_SEEN])
        except ValueError as e:
            r.problem(f"metadata.annotations[{LAST_SEEN}]", ann[LAST_SEEN], str(e))

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

    return Node(
        name=r.name,
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
        created=_created(meta),
    )


def _created(meta: Mapping[str, Any]) -> str:
    """``metadata.creationTimestamp`` as the API server writes it, or "" (ordering only)."""
    created = meta.get("creationTimestamp", "")
    return created if isinstance(created, str) and _TIMESTAMP.match(created) else ""


def read_last_seen(text: str) -> int:
    """A ``last-seen`` annotation: a Unix time in seconds, as Go's ``ParseInt(s, 10, 64)``."""
    return parse_int(text, -(2**63), 2**63 - 1, "a Unix time")


def _discovered_endpoints(text: str, r: _Reader) -> dict[str, Endpoint] | None:
    """The map of public key to the UDP address it was last seen from; a malformed entry is
    dropped (a problem), the others kept."""
    field = f"metadata.annotations[{DISCOVERED_ENDPOINTS}]"
    try:
        raw = load_json(text)
    except ValueError as e:
        r.problem(field, text, f"not JSON: {e}")
        return None
    if not isinstance(raw, dict):
        r.problem(field, text, "not a JSON map of public key to UDP address")
        return None
    out: dict[str, Endpoint] = {}
    for k, v in raw.items():
        if v is None:
            continue
        try:
            Key.parse(k)
            if not isinstance(v, dict):
                raise ValueError("not an object with IP and Port")
            # Go's decoder matches field names without regard to case, the last one winning
            got = {f.lower(): x for f, x in v.items() if isinstance(f, str)}
            ip, port, zone = got.get("ip"), got.get("port"), got.get("zone", "")
            if not isinstance(ip, str) or zone not in ("", None):
                raise ValueError("IP must be an address without a zone")
            if type(port) is not int or not 0 < port < 65536:
                raise ValueError("Port must be a number 1-65535")
            out[k] = Endpoint(port=port, ip=parse_ip(ip))
        except ValueError as e:
            why = f"not a UDP address of a public key: {e}; ignored"
            r.problem(f"{field}[{_shown(k)}]", v, why)
    return out


def discovered_endpoints_json(endpoints: Mapping[str, Endpoint]) -> str:
    """The annotation value, in the shape Go's ``json.Marshal(map[string]*net.UDPAddr)`` gives."""
    return json.dumps(
        {k: {"IP": str(e.ip), "Port": e.port, "Zone": ""} for k, e in sorted(endpoints.items())},
        separators=(",", ":"),
    )


def _is_int(v: Any) -> bool:
    return type(v) is int  # not a bool, not a float


def peer_validation_error(spec: Mapping[str, Any]) -> str | None:
    """Kilo's ``Peer.Validate``, with the types the CRD gives: the first reason the spec is
    invalid, or None."""
    ips = spec.get("allowedIPs")
    if ips is not None and not isinstance(ips, list):
        return f"spec.allowedIPs: {ips!r} is not a list of CIDRs"
    for ip in ips or []:
        if not isinstance(ip, str):
            return f"spec.allowedIPs: {ip!r} is not a CIDR"
        try:
            parse_cidr(ip)
        except ValueError as e:
            return f"spec.allowedIPs: {ip!r} is not a CIDR: {e}"
    ep = spec.get("endpoint")
    if ep is not None:
        if not isinstance(ep, Mapping) or not isinstance(ep.get("dnsOrIP") or {}, Mapping):
            return f"spec.endpoint: {ep!r} is not an endpoint (dnsOrIP and port)"
        d = ep.get("dnsOrIP") or {}
        dns, ip = d.get("dns") or "", d.get("ip") or ""
        if not isinstance(dns, str) or not isinstance(ip, str):
            return "spec.endpoint.dnsOrIP: dns and ip must be strings"
        if not dns and not ip:
            return "spec.endpoint.dnsOrIP: either a DNS name or an IP address must be given"
        if dns and not is_dns1123_subdomain(dns):
            return f"spec.endpoint.dnsOrIP.dns: {dns!r} is not a DNS-1123 subdomain"
        if ip:
            try:
                parse_ip(ip)
            except ValueError:
                return f"spec.endpoint.dnsOrIP.ip: {ip!r} is not an IP address"
        port = ep.get("port", 0)
        if not _is_int(port) or not 1 <= port <= 65535:
            return f"spec.endpoint.port: {port!r} is not a UDP port number (1-65535)"
    pka = spec.get("persistentKeepalive", 0) or 0
    if not _is_int(pka) or pka < 0:
        return f"spec.persistentKeepalive: {pka!r} must be an integer >= 0"
    try:
        Key.parse(spec.get("publicKey", ""))
    except InvalidKey as e:
        return f"spec.publicKey: not a WireGuard key: {e}"
    return None


def peer_from_object(obj: Any) -> tuple[Peer | None, list[Problem]]:
    """A Peer, or None when Kilo would skip it as invalid (the problem says why)."""
    r = _Reader("Peer", _name(obj))
    if not isinstance(obj, Mapping) or not r.name:
        r.problem("metadata.name", _mapping(obj).get("metadata"), "an object without a name")
        return None, r.problems
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        r.problem("spec", spec, "not an object")
        return None, r.problems
    created = _created(_mapping(obj.get("metadata")))
    try:
        peer = _peer(spec, r)
        return (None if peer is None else replace(peer, created=created)), r.problems
    except Exception as e:  # noqa: BLE001 - reading never raises: a problem instead
        r.problem("", "", f"unreadable: {type(e).__name__}: {e}")
        return None, r.problems


def _peer(spec: Mapping[str, Any], r: _Reader) -> Peer | None:
    err = peer_validation_error(spec)
    if err is not None:
        field, _, reason = err.partition(": ")
        r.problem(field, _spec_value(spec, field), reason)
        return None
    allowed = tuple(parse_cidr(a) for a in spec.get("allowedIPs") or [])
    endpoint = None
    ep = spec.get("endpoint")
    if ep is not None and ep.get("port", 0) > 0:
        d = ep.get("dnsOrIP") or {}
        if d.get("ip"):
            endpoint = Endpoint(port=ep["port"], ip=parse_ip(d["ip"]))
        if d.get("dns"):
            endpoint = _dns_endpoint(ep["port"], d["dns"])
    psk = None
    if spec.get("presharedKey"):
        try:
            psk = Key.parse(spec["presharedKey"])
        except InvalidKey as e:
            r.problem("spec.presharedKey", "<redacted>", f"not a WireGuard key: {e}; ignored")
    keepalive = spec.get("persistentKeepalive") or 0
    if keepalive > MAX_KEEPALIVE:
        r.problem("spec.persistentKeepalive", keepalive, f"over {MAX_KEEPALIVE} s; read as 0")
        keepalive = 0
    return Peer(
        name=r.name,
        public_key=Key.parse(spec["publicKey"]),
        allowed_ips=allowed,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        preshared_key=psk,
    )


def _dns_endpoint(port: int, dns: str) -> Endpoint:
    """A Peer's ``dns`` endpoint; a "name" that reads as an IP address is that IP (as Kilo
    reads it, so ``--as-peer`` prints it under ``ip``)."""
    try:
        return Endpoint(port=port, ip=parse_ip(dns))
    except ValueError:
        return Endpoint(port=port, dns=dns)


def _spec_value(spec: Mapping[str, Any], field: str) -> Any:
    cur: Any = spec
    for part in field.removeprefix("spec.").split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def node_annotations(node: Node) -> dict[str, str]:
    """The annotations the agent publishes for its own node (Kilo's ``Set``); a value with
    control characters is refused (``kilo.syntax.UnsafeValue``)."""
    out = {
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
    for k, v in out.items():
        syntax.text(v, f"annotation {k}")
    return out


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
    if preshared_key is not None:  # given, even all zeros (Kilo prints that too)
        spec["presharedKey"] = str(preshared_key)
    spec["publicKey"] = _key_text(public_key)
    return {
        "apiVersion": PEER_API_VERSION,
        "kind": PEER_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
