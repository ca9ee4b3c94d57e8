"""The device that carries traffic inside a location follows the compatibility mode."""

from __future__ import annotations

import pytest

from kilo.keys import Key
from kilo.plan import ClusterView, LocalFacts, Settings, plan
from kilo.routes import KILO_TABLE, Compatibility, Encapsulation, Strategy
from kilo.translate import node_from_object

from .helpers import NOW, node_obj


def view() -> ClusterView:
    objs = [
        node_obj(
            f"{loc}{i}", loc, internal_ip=f"10.{t}.0.{i}/24", pod_cidr=f"10.2.{t * 10 + i}.0/24"
        )
        for loc, t in (("a", 1), ("b", 3))
        for i in (1, 2)
    ]
    return ClusterView({n.name: n for n in (node_from_object(o)[0] for o in objs)}, {})


@pytest.mark.parametrize(
    ("compatibility", "device", "gw"),
    [
        (Compatibility.NONE, "tunl0", "10.1.0.2"),  # IPIP to the member's private IP
        (Compatibility.FLANNEL, "flannel.1", "10.2.12.0"),  # VXLAN to its pod subnet address
    ],
)
def test_the_leaders_routes_to_members_take_the_modes_device(
    compatibility: Compatibility, device: str, gw: str
) -> None:
    facts = LocalFacts(private_key=Key(bytes(range(32))), now=float(NOW), underlay_mtu=1500)
    enc = Encapsulation(Strategy.ALWAYS, compatibility)
    p = plan(view(), facts, Settings(hostname="a1", encapsulation=enc))
    assert p.dataplane is not None
    inside = [r for r in p.dataplane.routes if r.table == KILO_TABLE]
    assert inside, p.dataplane.routes
    assert {(r.dev, str(r.gw)) for r in inside} == {(device, gw)}
