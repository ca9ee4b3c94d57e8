"""``kgctl link``'s pure part: the Peers a cluster's leaders make, and what to write."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from kilo.cli import kgctl
from kilo.link import (
    LINK_LABEL,
    carrier_of,
    changes,
    check_cluster_name,
    exported_peers,
    peer_name,
)
from kilo.mesh import Options, read_cluster
from kilo.model import Granularity
from kilo.strict import parse_network
from tests.unit.helpers import NOW, node_obj

CLUSTERS = pathlib.Path(__file__).resolve().parents[1] / "data" / "clusters"


def three_locations() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    items = yaml.safe_load((CLUSTERS / "three-locations.yaml").read_text())["items"]
    return [o for o in items if o["kind"] == "Node"], [o for o in items if o["kind"] == "Peer"]


def test_each_leader_becomes_the_peer_showconf_prints(capsys: pytest.CaptureFixture[str]) -> None:
    nodes, peers = three_locations()
    state = read_cluster(nodes, peers, "topology.kubernetes.io/region")
    now = max(n.last_seen for n in state.nodes)
    svc = parse_network("10.96.0.0/12")
    desired, warnings = exported_peers(
        state, Options(granularity=Granularity.LOCATION), now, "c1", [svc]
    )
    assert warnings == []
    assert sorted(desired) == ["c1-aws-a", "c1-gcp-b", "c1-onprem-a"]
    for name, obj in desired.items():
        assert obj["metadata"]["labels"] == {LINK_LABEL: "c1"}
        node = name.removeprefix("c1-")
        extra = ["--allowed-ips", "10.96.0.0/12"] if name == "c1-aws-a" else []  # the carrier
        argv = ["--from-file", str(CLUSTERS / "three-locations.yaml"), "--now", str(now),
                "--mesh-granularity", "location", "showconf", "node", node, "--as-peer",
                "-o", "json", *extra]  # fmt: skip
        assert kgctl.run(argv) == 0
        printed = json.loads(capsys.readouterr().out)
        assert obj["spec"] == printed["spec"]  # what the seed's loop applies for that node


def test_the_extra_prefixes_stay_on_their_carrier_until_it_goes() -> None:
    nodes, peers = three_locations()
    state = read_cluster(nodes, peers, "topology.kubernetes.io/region")
    now = max(n.last_seen for n in state.nodes)
    opts = Options(granularity=Granularity.LOCATION)
    svc = [parse_network("10.96.0.0/12")]

    def carriers(d: dict[str, dict[str, Any]]) -> list[str]:
        return [n for n, o in d.items() if "10.96.0.0/12" in o["spec"]["allowedIPs"]]

    first, _ = exported_peers(state, opts, now, "c1", svc)
    assert carriers(first) == ["c1-aws-a"]
    assert carrier_of(list(first.values()), svc) == "c1-aws-a"
    kept, _ = exported_peers(state, opts, now, "c1", svc, carrier="c1-onprem-a")
    assert carriers(kept) == ["c1-onprem-a"]
    moved, _ = exported_peers(state, opts, now, "c1", svc, carrier="c1-gone")
    assert carriers(moved) == ["c1-aws-a"]
    assert carrier_of([{"spec": "x"}, "y", {"spec": {"allowedIPs": ["1.2.3.4/32"]}}], svc) is None  # type: ignore[list-item]


def test_changes_create_update_delete_only_what_the_link_owns() -> None:
    want: dict[str, dict[str, Any]] = {
        "c1-a": {"metadata": {"name": "c1-a", "labels": {LINK_LABEL: "c1"}}, "spec": {"x": 1}},
        "c1-b": {"metadata": {"name": "c1-b", "labels": {LINK_LABEL: "c1"}}, "spec": {"x": 2}},
        "c1-c": {"metadata": {"name": "c1-c", "labels": {LINK_LABEL: "c1"}}, "spec": {"x": 3}},
    }
    owned = [
        {"metadata": {"name": "c1-b", "labels": {LINK_LABEL: "c1"}, "resourceVersion": "7"},
         "spec": {"x": 0}},
        {"metadata": {"name": "c1-c", "labels": {LINK_LABEL: "c1"}}, "spec": {"x": 3}},
        {"metadata": {"name": "c1-gone", "labels": {LINK_LABEL: "c1"}, "uid": "u1"}},
        {"metadata": {"name": "c1-a", "labels": {LINK_LABEL: "c2"}}},  # another link's
        {"metadata": {"name": "laptop"}},  # nobody's: never touched
        {"metadata": "garbage"},
        "garbage",
    ]  # fmt: skip
    ch = changes(want, owned, "c1")  # type: ignore[arg-type]
    assert [o["metadata"]["name"] for o in ch.create] == ["c1-a"]
    assert [(o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in ch.update] == [
        ("c1-b", "7")
    ]
    assert ch.delete == [("c1-gone", "u1")]
    assert "resourceVersion" not in want["c1-b"]["metadata"]  # the desired object is not changed
    assert not changes({}, [], "c1")


def test_a_stale_leader_moves_its_peer() -> None:
    nodes = [
        node_obj("a1", "eu", internal_ip="10.0.1.1/24", pod_cidr="10.2.1.0/24"),
        node_obj("a2", "eu", internal_ip="10.0.1.2/24", pod_cidr="10.2.2.0/24"),
    ]
    state = read_cluster(nodes, [], "topology.kubernetes.io/region")
    opts = Options(granularity=Granularity.LOCATION)
    before, _ = exported_peers(state, opts, NOW, "c1")
    nodes[0] = node_obj("a1", "eu", internal_ip="10.0.1.1/24", pod_cidr="10.2.1.0/24",
                        last_seen=NOW - 600)  # fmt: skip
    after, _ = exported_peers(read_cluster(nodes, [], "topology.kubernetes.io/region"), opts,
                              NOW, "c1")  # fmt: skip
    assert list(before) == ["c1-a1"] and list(after) == ["c1-a2"]
    ch = changes(after, [{**before["c1-a1"], "metadata": {**before["c1-a1"]["metadata"],
                                                          "uid": "u"}}], "c1")  # fmt: skip
    assert [o["metadata"]["name"] for o in ch.create] == ["c1-a2"]
    assert ch.delete == [("c1-a1", "u")]


@pytest.mark.parametrize("bad", ["", "C1", "c_1", "-c", "c-", "a" * 33, "c1\n", "c.1"])
def test_cluster_names_are_short_dns_labels(bad: str) -> None:
    with pytest.raises(ValueError):
        check_cluster_name(bad)
    check_cluster_name("c1")


def test_peer_names_stay_object_names() -> None:
    assert peer_name("c1", "node.example") == "c1-node.example"
    assert peer_name("c1", "x" * 260) is None
    assert peer_name("c1", "Bad") is None


def test_link_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["link", "--name", "c1", "--to-kubeconfig", "/nonexistent", "--to-name"]
    assert kgctl.run([*base, "c1"]) == 1
    assert "must differ" in capsys.readouterr().err
    assert kgctl.run([*base, "C2"]) == 1
    assert capsys.readouterr().err.startswith("error: cluster name 'C2'")
    assert kgctl.run(["--from-file", "x", *base, "c2"]) == 1
    assert "live clusters" in capsys.readouterr().err
