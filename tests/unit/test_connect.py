"""``kgctl connect``: the pure part (config and routes from the cluster, the Peer claimed) and
the loop through fakes (tests/integration/test_kgctl_connect.py runs it in a lab)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from kilo.cli import kgctl
from kilo.connect import (
    ConnectError,
    Connector,
    PeerExists,
    Settings,
    check_name,
    claim,
    default_key_path,
    desired,
    peer_manifest,
    routes_for,
)
from kilo.keys import Key
from kilo.mesh import Options, UserError, read_cluster, showconf_peer
from kilo.model import Endpoint, Granularity, Prefix
from kilo.routes import Route
from kilo.wireguard import WgConf, WgPeer, parse
from tests.unit.helpers import NOW, key_for, node_obj, peer_obj

Obj = dict[str, Any]
KEY = Key.parse(key_for("laptop-private"))
PUBLIC = KEY.public()
OPTS = Options(granularity=Granularity.LOCATION)


def net(s: str) -> Prefix:
    return ipaddress.ip_interface(s)


def cluster() -> tuple[list[Obj], list[Obj]]:
    nodes = [
        node_obj("a1", "aws", internal_ip="10.10.1.1/24", pod_cidr="10.2.0.0/24"),
        node_obj("a2", "aws", internal_ip="10.10.1.2/24", pod_cidr="10.2.1.0/24"),
        node_obj("g1", "gcp", internal_ip="10.20.1.1/24", pod_cidr="10.2.2.0/24"),
    ]
    laptop = peer_obj("laptop", ["10.5.0.9/32"], persistentKeepalive=10)
    laptop["spec"]["publicKey"] = str(PUBLIC)
    return nodes, [laptop, peer_obj("other", ["10.5.0.20/32"])]


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"name": "laptop", "options": OPTS, "address": net("10.5.0.9/32")}
    base.update(kw)
    return Settings(**base)


def test_the_config_is_showconf_peers_with_our_key_and_port() -> None:
    nodes, peers = cluster()
    state = read_cluster(nodes, peers, OPTS.topology_label)
    want = desired(state, settings(), KEY, NOW)
    shown = parse(showconf_peer(state, "laptop", OPTS, NOW).stdout)
    assert want.conf.peers == shown.peers
    assert want.conf.private_key == KEY and want.conf.listen_port == 51820
    assert len(want.conf.peers) == 3  # two locations and the other peer


def test_a_route_through_the_interface_for_every_allowed_ip_once() -> None:
    nodes, peers = cluster()
    want = desired(read_cluster(nodes, peers, OPTS.topology_label), settings(), KEY, NOW)
    allowed = {str(a.network) for p in want.conf.peers for a in p.allowed_ips}
    assert {str(r.dst.network) for r in want.routes} == allowed
    assert len(want.routes) == len(allowed)
    assert all(r.dev == "kilo0" and r.gw is None and not r.onlink for r in want.routes)
    assert "10.5.0.20/32" in allowed and "10.5.0.9/32" not in allowed  # not our own address


def test_allowed_ips_go_to_the_first_ready_node_by_name() -> None:
    nodes, peers = cluster()
    nodes.reverse()  # the order of the list does not matter: the name does
    nodes[0]["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = "1"  # g1 not ready
    state = read_cluster(nodes, peers, OPTS.topology_label)
    s = settings(location_ips=(net("10.3.0.0/16"),), interface="wg7")
    want = desired(state, s, KEY, NOW)
    with_it = [p for p in want.conf.peers if net("10.3.0.0/16") in p.allowed_ips]
    assert [p.public_key for p in with_it] == [Key.parse(key_for("a1"))]
    assert Route(net("10.3.0.0/16"), "wg7") in want.routes


def test_no_config_without_the_peer_or_a_ready_node() -> None:
    nodes, peers = cluster()
    state = read_cluster(nodes, peers[1:], OPTS.topology_label)
    with pytest.raises(UserError, match='did not find any peer named "laptop"'):
        desired(state, settings(), KEY, NOW)
    with pytest.raises(UserError, match="did not find any valid Kilo nodes"):
        desired(read_cluster([], peers, OPTS.topology_label), settings(), KEY, NOW)


def test_routes_that_would_swallow_the_tunnel_are_not_set() -> None:
    ep = Endpoint(port=51820, ip=ipaddress.ip_address("198.51.100.7"))
    conf = WgConf(
        peers=[
            WgPeer(Key.parse(key_for("x")), [net("10.2.0.0/24"), net("0.0.0.0/0")], ep),
            WgPeer(Key.parse(key_for("y")), [net("198.51.100.0/24"), net("172.31.0.0/16")]),
            WgPeer(Key.parse(key_for("z")), [net("10.2.0.0/24"), net("fd00::/64")]),
        ]
    )
    routes, warnings = routes_for(conf, "kilo0", [ipaddress.ip_address("172.31.254.1")])
    assert [str(r.dst) for r in routes] == ["10.2.0.0/24", "fd00::/64"]
    assert len(warnings) == 3
    assert "0.0.0.0/0" in warnings[0] and "default route" in warnings[0]
    assert "198.51.100.7" in warnings[1] and "172.31.254.1" in warnings[2]


def test_a_new_peer_is_created_ours_is_used_anyone_elses_is_refused() -> None:
    manifest = peer_manifest("laptop", PUBLIC, net("10.5.0.9/32"), 10)
    assert manifest["spec"] == {
        "allowedIPs": ["10.5.0.9/32"],
        "persistentKeepalive": 10,
        "publicKey": str(PUBLIC),
    }
    assert claim(None, "laptop", PUBLIC) is True
    assert claim(manifest, "laptop", PUBLIC) is False
    other = peer_obj("laptop", ["10.5.0.9/32"])
    with pytest.raises(ConnectError, match=re.escape(f"public key {key_for('laptop')}, not ours")):
        claim(other, "laptop", PUBLIC)


@pytest.mark.parametrize(
    "obj",
    [
        {"metadata": {"name": "laptop"}, "spec": "x"},
        {"metadata": {"name": "laptop"}, "spec": {"publicKey": 7, "allowedIPs": ["10.5.0.9/32"]}},
        {"metadata": {"name": "laptop"}, "spec": {"allowedIPs": ["10.5.0.9/32"]}},
        {"metadata": {"name": "laptop"}, "spec": {"publicKey": "\x1b[2J", "allowedIPs": "x"}},
        {"metadata": "laptop"},
        [],
    ],
)
def test_an_unreadable_peer_is_refused_not_raised(obj: Any) -> None:
    with pytest.raises(ConnectError, match="cannot be read"):
        claim(obj, "laptop", PUBLIC)


def test_peer_names_are_kubernetes_names() -> None:
    check_name("laptop.example")
    assert default_key_path("laptop") == "/var/lib/kilo/connect/laptop.key"
    for bad in ("../etc/x", "a/b", "", "Laptop", "a..b", "x" * 254):
        with pytest.raises(ConnectError, match="invalid peer name"):
            check_name(bad)


# ---------------------------------------------------------------------------- the loop


class FakeCluster:
    def __init__(self, nodes: list[Obj], peers: list[Obj]) -> None:
        self._nodes, self._peers = nodes, peers
        self.created: list[Obj] = []
        self.deleted: list[tuple[str, str]] = []

    def nodes(self) -> list[Obj]:
        return self._nodes

    def peers(self) -> list[Obj]:
        return self._peers

    def leases(self) -> list[Obj]:
        return []

    def create_peer(self, obj: Obj) -> Obj:
        if any(p["metadata"]["name"] == obj["metadata"]["name"] for p in self._peers):
            raise PeerExists()
        made = {**obj, "metadata": {**obj["metadata"], "uid": "u-1"}}
        self.created.append(made)
        self._peers.append(made)
        return made

    def delete_peer(self, name: str, uid: str) -> None:
        self.deleted.append((name, uid))


class FakeInterface:
    def __init__(self) -> None:
        self.confs: list[WgConf] = []
        self.link: tuple[list[Prefix], int | None] | None = None
        self.closed: bool | None = None
        self.on_restart: Callable[[], None] | None = None

    def ensure(self) -> list[str]:
        return ["create kilo0"]

    def configure_link(self, addresses: Sequence[Prefix], mtu: int | None) -> list[str]:
        self.link = (list(addresses), mtu)
        return []

    def apply(self, desired: WgConf, previous: WgConf | None = None) -> list[str]:
        self.confs.append(desired)
        return []

    def supervise(self, on_restart: Callable[[], None]) -> None:
        self.on_restart = on_restart

    def close(self, remove: bool = True) -> None:
        self.closed = remove


class FakeRoutes:
    def __init__(self, fail: bool = False) -> None:
        self.sets: list[list[Route]] = []
        self.fail = fail

    def reconcile(self, routes: Iterable[Route]) -> list[str]:
        self.sets.append(list(routes))
        if self.fail:
            raise RuntimeError("no")
        return []


def connector(
    nodes: list[Obj], peers: list[Obj], **kw: Any
) -> tuple[Connector, FakeCluster, FakeInterface, FakeRoutes]:
    c, i, r = FakeCluster(nodes, peers), FakeInterface(), FakeRoutes()
    return Connector(settings(**kw), KEY, c, i, r, clock=lambda: NOW), c, i, r


def test_the_loop_creates_applies_and_cleans_up_its_peer() -> None:
    nodes, peers = cluster()
    conn, c, i, r = connector(nodes, peers[1:], mtu=1380)
    conn.claim_peer()
    assert [p["spec"]["publicKey"] for p in c.created] == [str(PUBLIC)]
    conn.start()
    assert i.link == ([net("10.5.0.9/32")], 1380) and i.on_restart is not None
    assert conn.sync()
    assert i.confs[-1].private_key == KEY and len(i.confs[-1].peers) == 3
    assert r.sets[-1] and all(x.dev == "kilo0" for x in r.sets[-1])
    i.on_restart()
    assert conn.wake.get_nowait() == "device"
    conn.clean_up()
    assert r.sets[-1] == [] and i.closed is True and c.deleted == [("laptop", "u-1")]


def test_an_existing_peer_of_ours_is_used_and_left() -> None:
    nodes, peers = cluster()
    conn, c, i, _ = connector(nodes, peers)
    conn.claim_peer()
    assert c.created == [] and conn.created_uid is None
    conn.clean_up()
    assert i.closed is None  # never started: nothing to remove
    conn.start()
    conn.clean_up()
    assert c.deleted == [] and i.closed is True


def test_someone_elses_peer_stops_the_connection() -> None:
    nodes, peers = cluster()
    peers[0]["spec"]["publicKey"] = key_for("someone")
    conn, c, _, _ = connector(nodes, peers)
    with pytest.raises(ConnectError, match="someone else's"):
        conn.claim_peer()
    assert c.created == []


def test_without_clean_up_everything_stays() -> None:
    nodes, peers = cluster()
    conn, c, i, r = connector(nodes, peers[1:], clean_up=False)
    conn.claim_peer()
    conn.sync()
    conn.clean_up()
    assert i.closed is False and c.deleted == [] and len(r.sets) == 1


def test_hostile_objects_and_failures_never_stop_the_loop() -> None:
    nodes, peers = cluster()
    junk: list[Any] = [
        "x",
        {"metadata": {"name": "bad", "annotations": {"kilo.squat.ai/key": 5}}},
        {"metadata": {"name": "z9", "annotations": "nope"}, "spec": []},
    ]
    conn, _, i, r = connector(nodes + junk, peers + junk)
    r.fail = True
    assert conn.sync() is False  # the routes failed; WireGuard was still applied
    assert len(i.confs) == 1
    r.fail = False
    assert conn.sync() is True
    conn.cluster._nodes = []  # type: ignore[attr-defined]
    assert conn.sync() is False and len(i.confs) == 2  # nothing to apply: the last stays


def test_kgctl_connect_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["connect", "laptop", "--allowed-ip", "10.5.0.9"], "allowed-ip must be a valid CIDR"),
        (["connect", "laptop", "--allowed-ips", "x"], "allowed-ips must contain only valid"),
        (["connect", "Laptop!"], "invalid peer name"),
        (["connect", "laptop", "--from-file", "/dev/null"], "needs a live cluster"),
        (["connect", "laptop", "--resync-period", "soon"], "invalid duration"),
        (["connect", "laptop", "--mtu", "0"], "must be positive"),
    ]
    for argv, message in cases:
        assert kgctl.run(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
