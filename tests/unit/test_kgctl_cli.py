from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kilo.cli.kgctl import run
from tests.unit.helpers import NOW, node_obj, peer_obj


@pytest.fixture()
def dump(tmp_path: Path) -> Path:
    items = [
        node_obj(
            "a", "1", "203.0.113.1:51820", "10.1.0.1/16", "10.2.1.0/24", granularity="location"
        ),
        node_obj(
            "b", "2", "203.0.113.2:51820", "10.1.0.2/16", "10.2.2.0/24", granularity="location"
        ),
        node_obj("c", "2", "10.1.0.3:51820", "10.1.0.3/16", "10.2.3.0/24", granularity="location"),
        peer_obj("laptop", ["10.5.0.1/32"], persistentKeepalive=10),
    ]
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return p


def kgctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = run(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_showconf_node(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = kgctl(capsys, "--from-file", str(dump), "showconf", "node", "a")
    assert rc == 0 and out.startswith("[Interface]\nListenPort = 51820\n\n[Peer]\n")


def test_not_a_leader_message_exit_zero(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = kgctl(capsys, "showconf", "node", "c", "--from-file", str(dump))
    assert (rc, out, err) == (0, "", 'warning: Node "c" is not a leader node\n')


def test_unknown_node_and_peer(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = kgctl(capsys, "--from-file", str(dump), "showconf", "node", "zz")
    assert rc == 1 and 'did not find any node named "zz" in the cluster' in err
    rc, _, err = kgctl(capsys, "--from-file", str(dump), "showconf", "peer", "zz")
    assert rc == 1 and 'did not find any peer named "zz" in the cluster' in err


def test_seed_multicluster_loop_flags(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = kgctl(
        capsys,
        "--from-file",
        str(dump),
        "showconf",
        "node",
        "b",
        "--as-peer",
        "-o",
        "yaml",
        "--allowed-ips",
        "10.96.0.0/12",
    )
    assert rc == 0
    obj = yaml.safe_load(out)
    assert obj["kind"] == "Peer" and obj["metadata"]["name"] == "b"
    assert obj["spec"]["allowedIPs"][-1] == "10.96.0.0/12"
    assert obj["spec"]["endpoint"] == {"dnsOrIP": {"ip": "203.0.113.2"}, "port": 51820}


def test_showconf_peer(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = kgctl(capsys, "--from-file", str(dump), "showconf", "peer", "laptop")
    assert rc == 0 and out.count("[Peer]") == 2 and "PersistentKeepalive = 10" in out


def test_graph(dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = kgctl(capsys, "graph", "--from-file", str(dump))
    assert rc == 0 and out.startswith("digraph kilo {\n") and out.endswith("\n}\n\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "0", "graph"], "invalid port"),
        (["--mesh-granularity", "galaxy", "graph"], "mesh granularity galaxy unknown"),
        (["showconf", "node", "a", "-o", "toml"], "output format toml unknown"),
        (
            ["showconf", "node", "a", "--allowed-ips", "10.0.0.1"],
            'allowed-ips must contain only valid CIDRs; got "10.0.0.1"',
        ),
    ],
)
def test_bad_flags(
    dump: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc, _, err = kgctl(capsys, "--from-file", str(dump), *args)
    assert rc == 1 and message in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = kgctl(capsys, "--from-file", str(tmp_path / "none.yaml"), "graph")
    assert rc == 1 and "cannot read" in err


def test_auto_granularity_needs_annotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump_all([node_obj("a", "1", pod_cidr="10.2.0.0/24")]))
    rc, _, err = kgctl(capsys, "--from-file", str(p), "graph")
    assert rc == 1 and "failed to determine granularity" in err
    rc, _, _ = kgctl(capsys, "--from-file", str(p), "--mesh-granularity", "full", "graph")
    assert rc == 0


def test_refused_claims_are_warnings_not_log_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    items = [
        node_obj("a", "1", "203.0.113.1:51820", "10.1.0.1/16", "10.2.1.0/24"),
        peer_obj("p1", ["10.5.0.1/32"]),
        peer_obj("p2", ["10.5.0.1/32", "10.2.1.7/32", "10.5.0.2/32"]),
    ]
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    for cmd in (["graph"], ["showconf", "peer", "p1"]):
        rc, _, err = kgctl(capsys, "--from-file", str(p), "--mesh-granularity", "full", *cmd)
        assert rc == 0
        lines = err.splitlines()
        assert lines == [
            "warning: Peer 'p2': spec.allowedIPs='10.5.0.1/32': already claimed by another peer; "
            "ignored",
            "warning: Peer 'p2': spec.allowedIPs='10.2.1.7/32': lies in the mesh's 10.2.1.0/24; "
            "ignored",
        ], cmd
    assert caplog.records == []


def test_native_cluster_leaders_are_the_lease_holders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a cluster of agents in the native liveness mode, kgctl shows the leaders the agents
    chose (the holders of the leader Leases), not Kilo's rule's; without a valid Lease, Kilo's
    rule."""
    from kilo.leases import lease_object

    def n(name: str, loc: str, third: int) -> dict[str, object]:
        return node_obj(
            name, loc, f"203.0.113.{third}:51820", f"10.1.0.{third}/16", f"10.2.{third}.0/24",
            last_seen=NOW - 3600, granularity="location", liveness="lease",
        )  # fmt: skip

    nodes = [n("a1", "a", 1), n("a2", "a", 2), n("b1", "b", 9)]
    lease = lease_object("location:a", "a2", NOW - 5, "kube-system")
    p = tmp_path / "native.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [*nodes, lease]}))
    args = ("--from-file", str(p), "--now", str(NOW), "showconf", "node")
    rc, out, err = kgctl(capsys, *args, "a2")
    assert rc == 0 and "[Peer]" in out, err
    assert kgctl(capsys, *args, "a1")[1:] == ("", 'warning: Node "a1" is not a leader node\n')
    rc, out, _ = kgctl(capsys, "--from-file", str(p), "--now", str(NOW), "graph")
    assert rc == 0
    # the Lease expired: Kilo's rule again, leaving out the holder of the expired Lease
    later = str(NOW + 3600)
    args = ("--from-file", str(p), "--now", later, "showconf", "node")
    assert kgctl(capsys, *args, "a2")[1:] == ("", 'warning: Node "a2" is not a leader node\n')
    rc, out, _ = kgctl(capsys, *args, "a1")
    assert rc == 0 and "[Peer]" in out


def test_subnet_too_small_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three segments in a /31: Kilo's error message, exit 1, no traceback."""
    items = [
        node_obj(
            n, n, f"203.0.113.{i}:51820", pod_cidr=f"10.2.{i}.0/24", wireguard_ip="10.4.0.0/31"
        )
        for i, n in enumerate("abc", 1)
    ]
    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    for cmd in (["graph"], ["showconf", "node", "a"], ["showconf", "node", "a", "--as-peer"]):
        rc, out, err = kgctl(capsys, "--from-file", str(p), "--mesh-granularity", "full", *cmd)
        assert (rc, out) == (1, "")
        assert err.splitlines()[-1] == (
            "error: failed to create topology: "
            "failed to allocate an IP address; ran out of IP addresses"
        )


@pytest.mark.parametrize(
    "args",
    [
        ["showconf", "node", "nobody"],
        ["showconf", "peer", "nobody"],
        ["showconf", "node", "a", "--port", "70000"],
        ["showconf", "node", "a", "--as-peer", "--allowed-ips", "not-a-cidr"],
        ["showconf", "node", "c"],
        ["showconf"],
        ["showconf", "node", "a", "--bogus"],
        ["graph", "--port", "x"],
        ["connect", "laptop"],
        ["link", "--to-kubeconfig", "/nonexistent"],
    ],
)
def test_every_stderr_line_is_a_warning_or_an_error(
    dump: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    try:
        rc = run(["--from-file", str(dump), *args])
    except SystemExit as e:  # argparse's usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines and all(line.startswith(("warning: ", "error: ")) for line in lines), err
    assert (rc == 0) == (not any(line.startswith("error: ") for line in lines)), (rc, err)
    if rc:
        assert rc == 1 and lines[-1].startswith("error: ") and out == ""
