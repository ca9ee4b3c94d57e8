from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from kilo.cli.kg import _duration, parser
from kilo.cni import default_conflist, pod_cidr_of, with_pod_cidr
from kilo.dataplane.files import KeyFileError, load_or_create_key
from kilo.hostinfo import HostAddress, choose_ips
from kilo.metrics import AgentMetrics
from kilo.server import parse_listen


def ha(ifname: str, cidr: str) -> HostAddress:
    return HostAddress(ifname, ipaddress.ip_interface(cidr))


def test_choose_ips_private_and_public() -> None:
    addrs = [
        ha("eth1", "198.51.100.7/24"),
        ha("eth0", "10.10.1.5/24"),
        ha("lo", "127.0.0.1/8"),
        ha("kube-bridge", "10.2.1.1/24"),
        ha("kilo0", "10.4.0.1/16"),
    ]
    priv, pub = choose_ips(addrs, skip=("kilo0",))
    assert priv is not None and str(priv.prefix) == "10.10.1.5/24" and priv.ifname == "eth0"
    assert pub is not None and str(pub.prefix) == "198.51.100.7/24"


def test_choose_ips_internal_cidr_filter_and_fallback() -> None:
    addrs = [ha("mgmt", "172.31.254.5/24"), ha("eth0", "10.10.1.5/24")]
    priv, pub = choose_ips(addrs, internal_cidrs=[ipaddress.ip_interface("10.10.1.0/24")])
    assert priv is not None and priv.ifname == "eth0"
    assert pub == priv  # no public address: the private one is the endpoint, as in Kilo


def test_cni_conflist() -> None:
    conf = default_conflist()
    assert pod_cidr_of(conf) is None
    new = with_pod_cidr(conf, ipaddress.ip_interface("10.2.3.0/24"))
    assert pod_cidr_of(new) == "10.2.3.0/24" and pod_cidr_of(conf) is None
    assert new["plugins"][0]["bridge"] == "kube-bridge"
    with pytest.raises(ValueError):
        with_pod_cidr({"plugins": [{"type": "portmap"}]}, ipaddress.ip_interface("10.2.3.0/24"))


def test_key_file_made_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "kilo" / "key"
    k1 = load_or_create_key(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert path.read_text().strip() == str(k1)
    assert load_or_create_key(str(path)) == k1
    path.write_text("garbage")
    with pytest.raises(KeyFileError, match="remove it"):
        load_or_create_key(str(path))
    assert path.read_text() == "garbage"


def test_metrics_text() -> None:
    m = AgentMetrics()
    m.leader.set(1)
    m.error("apply")
    m.error("apply")
    text = m.render().decode()
    assert "# TYPE kilo_leader gauge\nkilo_leader 1.0\n" in text
    assert 'kilo_errors_total{event="apply"} 2.0' in text
    assert "_created" not in text


@pytest.mark.parametrize(
    "listen, want",
    [
        (":1107", ("0.0.0.0", 1107)),
        ("10.0.0.1:9000", ("10.0.0.1", 9000)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_parse_listen(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


def test_kg_flags_defaults_like_kilo() -> None:
    a = parser().parse_args(["--hostname", "n1"])
    assert (a.interface, a.port, a.subnet, a.mesh_granularity, a.encapsulate, a.listen, a.mtu) == (
        "kilo0",
        51820,
        "10.4.0.0/16",
        "location",
        "always",
        ":1107",
        "auto",
    )
    assert a.local and a.cni and a.create_interface and not a.clean_up
    a = parser().parse_args(["--hostname", "n1", "--cni=false", "--local", "false", "--clean-up"])
    assert not a.cni and not a.local and a.clean_up
    assert _duration("30s") == 30 and _duration("1m") == 60 and _duration("500ms") == 0.5


def test_outage_time_not_held_against_check_ins() -> None:
    from kilo.plan import unreachable_seconds

    assert unreachable_seconds(100, 200, []) == 0
    assert unreachable_seconds(100, 200, [(120, 150)]) == 30
    assert unreachable_seconds(100, 200, [(50, 110), (190, None)]) == 20  # clipped at both ends
    assert unreachable_seconds(100, 200, [(10, 20), (300, None)]) == 0


def test_peer_metrics_text() -> None:
    from kilo.keys import Key
    from kilo.wgstate import PeerState

    m = AgentMetrics()
    k1, k2 = Key.generate().public(), Key.generate().public()
    states = [
        PeerState(public_key=k1, last_handshake=90.0, rx_bytes=5, tx_bytes=7),
        PeerState(public_key=k2, rx_bytes=1),
    ]
    m.set_peer_states(states, {bytes(k1): "n1"}, now=100.25)
    text = m.render().decode()
    assert "# TYPE kilo_peer_last_handshake_age_seconds gauge\n" in text
    assert 'kilo_peer_last_handshake_age_seconds{peer="n1"} 10.25\n' in text
    assert f'kilo_peer_receive_bytes{{peer="{k2}"}} 1.0\n' in text
    assert 'kilo_peer_transmit_bytes{peer="n1"} 7.0\n' in text
    assert text.count("kilo_peer_last_handshake_age_seconds{") == 1
    m.set_peer_states([], {}, now=0.0)  # only the device's current peers
    assert "kilo_peer_receive_bytes{" not in m.render().decode()
    assert m.registry.get_sample_value("kilo_peer_transmit_bytes", {"peer": "n1"}) is None
