"""Seeded random clusters for the differential: 2-12 Nodes and 0-6 Peers, healthy values mixed
with odd ones (``values``), and the kgctl commands to run on each.

The same (seed, now) always gives the same cluster. What Kilo 0.7.0 reads in listing order
(an informer cache: no fixed order) is kept out of play, as ``tests/data/README.md`` explains:
every node carries the same granularity annotation, every ``wireguard-ip`` lies in one network
with one prefix length, and a public key has the same discovered endpoint on every node that
lists it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kilo_lab.kilo_diff import values

A = "kilo.squat.ai/"
REGION = "topology.kubernetes.io/region"
ZONE = "example.com/zone"
WORDS = ["ash", "bay", "cedar", "dune", "elm", "fjord", "glen", "heath", "iris", "juniper"]
PEER_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
#: The networks a cluster's wireguard-ip annotations come from (None: there are none).
SUBNETS: list[tuple[str, int] | None] = [
    None,
    None,
    None,
    ("10.4.0.", 16),
    ("10.4.0.", 16),
    ("10.10.0.", 24),
    # room for 14 segments, more than a cluster has: a subnet short of exactly one address
    # makes Kilo give the last segment none (an empty IP, printed <nil>), ours fails as Kilo
    # does when it is short of two or more
    ("10.4.0.", 28),
    ("10.4.", 8),
]


@dataclass
class Cluster:
    """One generated cluster: the objects to create and the kgctl argvs (without ``kgctl``)."""

    name: str
    seed: int
    now: int
    objects: list[dict[str, Any]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)


def cluster_name(seed: int) -> str:
    return f"seed-{seed:04d}"


def generate(seed: int, now: int) -> Cluster:
    rng = random.Random(seed)
    c = Cluster(cluster_name(seed), seed, now)
    v6 = rng.random() < 0.15
    pool = sorted({values.location(rng) for _ in range(8)})
    locations = [*rng.sample(pool, k=rng.randint(1, 3)), ""]
    granularity = values.granularity(rng)
    subnet = rng.choice(SUBNETS)
    n_nodes, n_peers = rng.randint(2, 12), rng.randint(0, 6)
    node_keys = [values.key(rng) for _ in range(n_nodes)]
    peer_keys = [values.key(rng) for _ in range(n_peers)]
    discovered = {
        k: (f"203.0.113.{rng.randrange(100, 200)}", rng.randrange(30000, 40000))
        for k in rng.sample(node_keys + peer_keys, k=min(3, rng.randint(0, n_nodes + n_peers)))
    }
    names = sorted(f"{rng.choice(WORDS)}-{i}" for i in range(n_nodes))
    for i, name in enumerate(names):
        c.objects.append(
            _node(rng, name, i, node_keys[i], now, v6, locations, granularity, subnet, discovered)
        )
    peer_names = sorted(rng.sample(PEER_WORDS, k=n_peers))
    for j, name in enumerate(peer_names):
        c.objects.append(_peer(rng, name, j, peer_keys[j], node_keys, v6))
    c.commands = _commands(rng, names, peer_names, granularity)
    return c


def _node(
    rng: random.Random,
    name: str,
    i: int,
    key: str,
    now: int,
    v6: bool,
    locations: list[str],
    granularity: str | None,
    subnet: tuple[str, int] | None,
    discovered: dict[str, tuple[str, int]],
) -> dict[str, Any]:
    ann: dict[str, str] = {}
    labels: dict[str, str] = {}
    ready = rng.random() < 0.8
    ann[A + "key"] = key if rng.random() < 0.9 else values.odd_key(rng)
    seen = values.last_seen(rng, now, ready)
    if seen is not None:
        ann[A + "last-seen"] = seen
    r = rng.random()
    if r < 0.8:
        host = values.endpoint_host(rng, public=rng.random() < 0.6, v6=v6 and rng.random() < 0.7)
        ann[A + "endpoint"] = f"{host}:{values.port(rng)}"
    elif r < 0.95:
        ann[A + "endpoint"] = values.odd_endpoint(rng)
    if rng.random() < 0.1:
        ann[A + "force-endpoint"] = (
            f"{values.endpoint_host(rng, True, v6)}:{values.port(rng)}"
            if rng.random() < 0.5
            else values.odd_endpoint(rng)
        )
    if rng.random() < 0.7:
        addr = f"fd00:1::{i + 1:x}" if v6 else f"10.1.{i // 4}.{i + 1}"
        plen = 64 if v6 else 24
        ann[A + "internal-ip"] = (
            f"{addr}/{plen}" if rng.random() < 0.7 else values.cidr_variants(rng, addr, plen)
        )
    if rng.random() < 0.08:
        ann[A + "force-internal-ip"] = rng.choice(["", "-", f"10.1.9.{i + 1}/24", "junk"])
    loc = rng.choice(locations)
    r = rng.random()
    if r < 0.55:
        ann[A + "location"] = loc
    elif r < 0.85:
        labels[REGION] = values.label_location(rng)
        if rng.random() < 0.2:
            ann[A + "location"] = loc
    if rng.random() < 0.3:
        labels[ZONE] = rng.choice(["z1", "z2", "z3"])
    if rng.random() < 0.15:
        ann[A + "leader"] = rng.choice(["", "true", "false"])
    if rng.random() < 0.2:
        ann[A + "persistent-keepalive"] = values.keepalive(rng)
    if subnet is not None and rng.random() < 0.4:
        base, plen = subnet
        addr = base + ("1" if base.count(".") == 3 else f"0.{i + 1}")
        if base.count(".") == 3:
            addr = base + str(i % 2 + 1)
        ann[A + "wireguard-ip"] = rng.choice(
            [f"{addr}/{plen}"] * 4 + [addr, f"{addr}/{plen + 33}", f"{addr}/255.0.0.0"]
        )
    if rng.random() < 0.1:
        ann[A + "allowed-location-ips"] = ",".join(
            values.cidr_variants(rng, f"192.168.{rng.randrange(0, 4)}.0", 24)
            if rng.random() < 0.7
            else rng.choice(["10.2.0.0/16", "10.5.0.1/32", "", "10.2.1.0/24"])
            for _ in range(rng.randint(1, 3))
        )
    if discovered and rng.random() < 0.3:
        ann[A + "discovered-endpoints"] = values.discovered_json(
            rng, dict(rng.sample(sorted(discovered.items()), k=rng.randint(1, len(discovered))))
        )
    if granularity is not None:
        ann[A + "granularity"] = granularity
    spec: dict[str, Any] = {}
    r = rng.random()
    pod = f"fd02:{i + 1:x}::/64" if v6 else f"10.2.{i + 1}.0/24"
    if r < 0.9:
        spec["podCIDR"] = pod
    elif r < 0.95:
        spec["podCIDR"] = pod.replace(".0/", ".5/").replace("::/", "::5/")  # host bits set
    meta: dict[str, Any] = {"name": name, "annotations": ann}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec}


def _peer(
    rng: random.Random, name: str, j: int, key: str, node_keys: list[str], v6: bool
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    ips = []
    for k in range(rng.randint(0, 3) if rng.random() < 0.1 else rng.randint(1, 3)):
        addr = f"10.5.{rng.choice([j, j, 0])}.{k + 1}"
        ips.append(
            rng.choice(
                [f"{addr}/32"] * 5
                + [
                    f"fd00:5::{j + 1:x}/128",
                    f"{addr}/24",
                    f"{addr}/{rng.choice(['032', '33'])}",
                    addr,
                    f"::ffff:{addr}/128",
                    f"::ffff:{addr}/{rng.choice(['120', '24'])}",
                    "0.0.0.0/0",  # wider than the nodes' addresses, not one of them: kept
                ]
            )
        )
    spec["allowedIPs"] = ips
    r = rng.random()
    spec["publicKey"] = (
        key if r < 0.85 else rng.choice(node_keys) if r < 0.9 else values.odd_key(rng)
    )
    if rng.random() < 0.5:
        dns_or_ip: dict[str, str] = {}
        r = rng.random()
        if r < 0.45:
            dns_or_ip["ip"] = rng.choice(
                [f"203.0.113.{j + 50}"] * 3
                + [f"2001:db8::{j + 1:x}", f"::ffff:203.0.113.{j + 50}", "fe80::1%eth0", "junk"]
            )
        elif r < 0.9:
            dns_or_ip["dns"] = rng.choice(
                [f"{name}.example.com"] * 3
                + ["Upper.example.com", f"203.0.113.{j + 50}", "bad_name", "x." * 3 + "com"]
            )
        elif r < 0.95:
            dns_or_ip = {"ip": f"203.0.113.{j + 50}", "dns": f"{name}.example.com"}
        # no negative port: Kilo's Go type is unsigned, so such a Peer fails to decode and Kilo's
        # kgctl waits for its informer's cache forever (ours skips that Peer and warns)
        port = rng.choice([51820] * 6 + [51821, 1, 65535, 0, 65536])
        spec["endpoint"] = {"dnsOrIP": dns_or_ip, "port": port}
    if rng.random() < 0.4:
        spec["persistentKeepalive"] = rng.choice([0, 1, 10, 25, 65535, -1])
    if rng.random() < 0.25:
        spec["presharedKey"] = rng.choice(
            [values.key(rng)] * 3 + ["", values.odd_key(rng), values.odd_key(rng)]
        )
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": spec,
    }


NODE_VARIANTS: list[list[str]] = [
    [],
    ["--as-peer"],
    ["--as-peer", "-o", "yaml", "--allowed-ips", "10.96.0.0/12"],
    ["--as-peer", "-o", "json"],
    ["--mesh-granularity", "full"],
    ["--mesh-granularity", "location"],
    ["--as-peer", "-o", "yaml", "--mesh-granularity", "full"],
    ["--as-peer", "--allowed-ips", "10.96.0.0/12,fd00:96::/108"],
    ["-o", "yaml"],
    ["--port", "51821"],
]
PEER_VARIANTS: list[list[str]] = [
    [],
    ["--as-peer"],
    ["--as-peer", "-o", "yaml"],
    ["--as-peer", "-o", "json", "--allowed-ips", "10.96.0.0/12"],
    ["--mesh-granularity", "full"],
    ["--as-peer", "--allowed-ips", "10.5.0.1/32,10.96.0.0/12"],
]
EXTRAS: list[list[str]] = [
    ["graph", "--mesh-granularity", "full"],
    ["graph", "--mesh-granularity", "location"],
    ["graph", "--topology-label", ZONE],
    ["graph", "--port", "51821"],
    ["showconf", "node", "does-not-exist"],
    ["showconf", "peer", "does-not-exist"],
]


def _commands(
    rng: random.Random, nodes: list[str], peers: list[str], granularity: str | None
) -> list[list[str]]:
    out: list[list[str]] = [["graph"]]
    out += rng.sample(EXTRAS, k=2)
    for n in rng.sample(nodes, k=min(len(nodes), rng.randint(2, 4))):
        out += [["showconf", "node", n, *v] for v in rng.sample(NODE_VARIANTS, k=2)]
    for p in rng.sample(peers, k=min(len(peers), rng.randint(1, 3))):
        out += [["showconf", "peer", p, *v] for v in rng.sample(PEER_VARIANTS, k=2)]
    if granularity not in ("location", "full"):
        # the default (auto) fails on every command: most of them name a granularity instead
        for argv in out[1:]:
            if "--mesh-granularity" not in argv and rng.random() < 0.7:
                argv += ["--mesh-granularity", rng.choice(["location", "full"])]
    seen: set[tuple[str, ...]] = set()
    unique = []
    for argv in out:
        if tuple(argv) not in seen:
            seen.add(tuple(argv))
            unique.append(argv)
    return unique
