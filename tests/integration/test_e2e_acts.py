"""End to end: the talk's three acts (the demo's own ``Story``) on a lab for each mesh
granularity, then a node joining, a node deleted, and (granularity ``location``) a leader lost.

One lab per granularity, shared by the module's tests and kept as small as the story allows:
cluster c1 over two locations (aws: a1, a2; gcp: g1), cluster c2 with one location (onprem: o1,
o2), and two peers (laptop, bare-metal-1). For ``full`` and ``cross`` every node has a public
address: each node tunnels to nodes of other locations itself. For ``location`` a2 has one as
well, so that it can take over when the leader a1 is lost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kilo_lab.acts import CLIENT_PEER
from kilo_lab.lab import Lab
from kilo_lab.observe import (
    allowed_ips,
    lab_pids,
    leaders,
    leftovers,
    node_keys,
    unreachable_pairs,
)
from kilo_lab.poll import wait_until
from kilo_lab.story import Story
from kilo_lab.testing import need_lab

from kilo.wireguard import parse as parse_wg

pytestmark = pytest.mark.integration

GRANULARITIES = ("location", "full", "cross")
#: tests that only make sense for some granularities (the rest run for all three)
ONLY: dict[str, tuple[str, ...]] = {"test_a_lost_leader_is_replaced": ("location",)}
JOINER = "a3"


def e2e_spec(name: str, granularity: str) -> dict[str, Any]:
    everyone = granularity != "location"
    return {
        "name": name,
        "kubeProxy": True,
        "clusters": [
            {
                "name": "c1",
                "granularity": granularity,
                "locations": [
                    {
                        "name": "aws",
                        "nodes": [{"name": "a1", "public": True}, {"name": "a2", "public": True}],
                    },
                    {"name": "gcp", "nodes": [{"name": "g1", "public": True}]},
                ],
            },
            {
                "name": "c2",
                "granularity": granularity,
                "locations": [
                    {
                        "name": "onprem",
                        "nodes": [
                            {"name": "o1", "public": True},
                            {"name": "o2", "public": everyone},
                        ],
                    },
                ],
            },
        ],
        "peers": ["laptop", "bare-metal-1"],
    }


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "story" in metafunc.fixturenames:
        grans = ONLY.get(metafunc.function.__name__, GRANULARITIES)
        metafunc.parametrize("story", grans, indirect=True, scope="module")


@pytest.fixture(scope="module")
def story(request: pytest.FixtureRequest) -> Iterator[Story]:
    granularity: str = request.param
    need_lab("wireguard-go", "kube-proxy")
    name = f"e2e{granularity[:3]}{uuid.uuid4().hex[:5]}"
    lab = Lab(e2e_spec(name, granularity))
    t0 = time.monotonic()
    lab.up()
    print(f"lab {name} ({granularity}) up in {time.monotonic() - t0:.1f} s")
    s = Story(lab)
    try:
        yield s
    finally:
        s.close()
        pids = lab_pids(lab)
        lab.down()
        assert leftovers(name, pids) == []


def no_failures(story: Story, act: str) -> None:
    checks = story.of(act)
    assert checks, f"act {act} recorded no checks"
    bad = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


# --- the acts -----------------------------------------------------------------------------


def test_act1_the_mesh(story: Story) -> None:
    story.act1()
    no_failures(story, "1")
    lab = story.lab
    found = leaders(lab, "c1")
    if story.c1.granularity == "location":
        assert found == ["a1", "g1"]
        live = parse_wg(lab.wg("a2", "showconf", "kilo0").stdout)
        assert live.peers == [], "a2 is not a leader but has WireGuard peers"
    else:
        assert found == ["a1", "a2", "g1"]


def test_act2_peers(story: Story) -> None:
    story.act2()
    no_failures(story, "2")


def test_act3_multi_cluster(story: Story) -> None:
    story.act3()
    no_failures(story, "3")


def test_graphs(story: Story, tmp_path: Any) -> None:
    paths = story.graphs(tmp_path)
    no_failures(story, "graph")
    assert all(p.stat().st_size > 1000 for p in paths)


# --- nodes joining and leaving --------------------------------------------------------------


def configs_of_others(story: Story, node: str) -> dict[str, str]:
    """Every place a node of c1 may appear, for every other node and the first peer: live
    WireGuard configs and routes of the nodes, and kgctl's view (graph, the peer's config)."""
    lab = story.lab
    out: dict[str, str] = {}
    for n in story.c1.nodes:
        if n.name == node:
            continue
        out[f"{n.name}: wg showconf kilo0"] = lab.wg(n.name, "showconf", "kilo0").stdout
        out[f"{n.name}: ip route"] = lab.exec(
            n.name, ["ip", "route", "show", "table", "all"]
        ).stdout
    out["kgctl graph"] = lab.kgctl("c1", "graph").stdout
    out[f"kgctl showconf peer {CLIENT_PEER}"] = lab.kgctl(
        "c1", "showconf", "peer", CLIENT_PEER, check=False
    ).stdout
    return out


def test_a_node_joins_and_is_reachable(story: Story) -> None:
    lab = story.lab
    public = story.c1.granularity != "location"
    t0 = time.monotonic()
    node = lab.add_node("c1", "aws", JOINER, public=public)
    new = f"{JOINER}-p0"
    pairs = [
        (p, new)
        for p in sorted(lab.pods)
        if p != new and lab.pods[p].node in {n.name for n in story.c1.nodes}
    ]
    pairs += [(b, a) for a, b in pairs]
    assert unreachable_pairs(lab, pairs, timeout=60) == []
    took = time.monotonic() - t0
    # the other location's tunnel ends carry the new pod CIDR
    for leader in leaders(lab, "c1"):
        if lab.spec.node(leader).location != "aws":
            assert str(node.pod_cidr) in allowed_ips(
                parse_wg(lab.wg(leader, "showconf", "kilo0").stdout)
            )
    print(f"{JOINER} joined and every pod reached its pod in {took:.1f} s")


def test_a_deleted_node_disappears_from_every_config(story: Story) -> None:
    lab = story.lab
    node = lab.spec.node(JOINER)
    key = node_keys(lab, "c1").get(JOINER)
    assert key is not None
    marks = [str(node.pod_cidr), f"{node.lan_ip}/32", str(key), f'"{JOINER}"']
    if node.public_ip is not None:
        marks.append(f"{node.public_ip}:")
    lab.remove_node(JOINER)
    seen: dict[str, list[str]] = {}

    def gone() -> bool:
        seen.clear()
        for where, text in configs_of_others(story, JOINER).items():
            hits = [m for m in marks if m in text]
            if hits:
                seen[where] = hits
        return not seen

    try:
        took = wait_until(f"{JOINER} gone from every config", gone, 45, interval=1.0)
    except AssertionError:
        pytest.fail(f"{JOINER} still appears: {seen}")
    remaining = [
        p for p in sorted(lab.pods) if lab.pods[p].node in {n.name for n in story.c1.nodes}
    ]
    pairs = [(a, b) for a in remaining for b in remaining if a != b]
    assert unreachable_pairs(lab, pairs, timeout=30) == []
    print(f"{JOINER} was gone from every config {took:.1f} s after its Node was deleted")


def test_a_lost_leader_is_replaced(story: Story) -> None:
    """The leader of aws (a1) stops for good: once its check-ins are older than Kilo's readiness
    window (2 x 30 s) the location elects a2, and traffic to gcp flows through a2's tunnel."""
    lab = story.lab
    assert leaders(lab, "c1") == ["a1", "g1"]
    keys = node_keys(lab, "c1")
    assert lab.ping("a2-p0", lab.pods["g1-p0"].address)
    t0 = time.monotonic()
    lab.stop_agent("a1")

    def a2_leads() -> bool:
        live = parse_wg(lab.wg("g1", "showconf", "kilo0").stdout)
        ks = {p.public_key for p in live.peers}
        return keys["a2"] in ks and keys["a1"] not in ks

    took = wait_until("g1 tunnels to a2 instead of a1", a2_leads, 150, interval=2.0)
    assert leaders(lab, "c1") == ["a2", "g1"]
    assert unreachable_pairs(lab, [("a2-p0", "g1-p0"), ("g1-p0", "a2-p0")], timeout=30) == []

    def rx_from_a2() -> int:
        out = lab.wg("g1", "show", "kilo0", "transfer").stdout.split()
        return sum(
            int(rx) for k, rx in zip(out[0::3], out[1::3], strict=False) if k == str(keys["a2"])
        )

    before = rx_from_a2()
    assert lab.ping("a2-p0", lab.pods["g1-p0"].address)
    assert rx_from_a2() > before, "a2-p0's traffic did not come through a2's tunnel"
    assert not lab.agent_running("a1")
    print(
        f"a2 took over from a1 {took:.0f} s after a1's agent stopped "
        f"({time.monotonic() - t0:.0f} s until traffic flowed through it)"
    )
