"""``kgctl status``, ``kgctl completion`` and the ``kubectl kilo`` form."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from kilo.cli import kgctl
from kilo.mesh import Options, read_cluster
from kilo.status import render, report, tunnels_from_metrics
from tests.unit.helpers import NOW, node_obj, peer_obj

CLUSTERS = pathlib.Path(__file__).resolve().parents[1] / "data" / "clusters"


def cluster() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = [
        node_obj("a1", "aws", internal_ip="10.0.1.1/24", pod_cidr="10.2.1.0/24"),
        node_obj("a2", "aws", internal_ip="10.0.1.2/24", pod_cidr="10.2.2.0/24"),
        node_obj("g1", "gcp", internal_ip="10.0.2.1/24", pod_cidr="10.2.3.0/24"),
        node_obj("stale", "gcp", pod_cidr="10.2.4.0/24", last_seen=NOW - 600),
        node_obj("nokey", "gcp", pod_cidr="10.2.5.0/24", key=None),
    ]
    peers = [
        peer_obj("laptop", ["10.5.0.1/32"], persistentKeepalive=25),
        peer_obj("thief", ["10.96.0.0/16"]),  # in the service CIDR: the agents refuse it
    ]
    return nodes, peers


def run_status(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, *args: str
) -> tuple[int, str, str]:
    nodes, peers = cluster()
    f = tmp_path / "cluster.json"
    f.write_text(json.dumps({"kind": "List", "items": nodes + peers}))
    rc = kgctl.run(
        [
            "status",
            "--from-file",
            str(f),
            "--now",
            str(NOW),
            "--service-cidr",
            "10.96.0.0/12",
            *args,
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_table_names_leaders_why_not_ready_and_the_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    rc, out, err = run_status(capsys, tmp_path, "--mesh-granularity", "location")
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line}
    assert "*" in rows["a1"] and "*" in rows["g1"] and "*" not in rows["a2"]
    assert "10.4.0." in rows["a1"]
    assert "no (not seen for 600s" in rows["stale"]
    assert "no (no key)" in rows["nokey"]
    assert "laptop" in rows and "10.5.0.1/32" in rows["laptop"]
    assert out.index("NODE") < out.index("PEER") < out.index("KIND")
    refused = [line for line in out.splitlines() if line.startswith("Peer   thief")]
    assert len(refused) == 1 and "agents" in refused[0] and "service CIDR" in refused[0]
    assert all(line.startswith("warning: ") for line in err.splitlines())


def test_auto_granularity_falls_back_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    rc, out, err = run_status(capsys, tmp_path)
    assert rc == 0
    assert out.startswith("Granularity: location")
    assert err.startswith("warning: failed to determine granularity")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_and_yaml_carry_the_same_fields(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, fmt: str
) -> None:
    rc, out, _ = run_status(capsys, tmp_path, "--mesh-granularity", "full", "-o", fmt)
    assert rc == 0
    data = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert data["granularity"] == "full"
    by_name = {n["name"]: n for n in data["nodes"]}
    assert by_name["a1"]["leader"] and by_name["a2"]["leader"]  # full: every ready node leads
    assert by_name["stale"]["ready"] is False and by_name["stale"]["lastSeenAge"] == 600
    assert {p["name"] for p in data["peers"]} == {"laptop", "thief"}
    assert {(q["name"], q["by"]) for q in data["problems"]} >= {("thief", "agents")}


def test_allowed_ranges_lift_a_refusal(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    rc, out, _ = run_status(capsys, tmp_path, "-o", "json", "--peer-allowed-ranges", "10.96.0.0/12")
    assert rc == 0
    assert not [q for q in json.loads(out)["problems"] if q["name"] == "thief"]
    assert kgctl.run(["status", "--from-file", "x", "--service-cidr", "nope"]) == 1


def test_tunnels_from_an_agents_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    m = tmp_path / "metrics"
    m.write_text(
        "# TYPE kilo_peer_last_handshake_age_seconds gauge\n"
        'kilo_peer_last_handshake_age_seconds{peer="g1"} 12.5\n'
        'kilo_peer_receive_bytes{peer="g1"} 4096\n'
        'kilo_peer_transmit_bytes{peer="laptop"} 7\n'
    )
    rc, out, _ = run_status(capsys, tmp_path, "--metrics", str(m), "-o", "wide")
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert rows["NODE"][-3:] == ["HANDSHAKE", "RX", "TX"]
    assert rows["g1"][-3:] == ["12s", "4096", "-"]
    assert rows["laptop"][-1] == "7"
    assert kgctl.run(["status", "--from-file", "x", "--metrics", str(tmp_path / "none")]) == 1


@pytest.mark.parametrize(
    "text",
    ["", "garbage{{{", 'kilo_peer_receive_bytes{peer="a"} notanumber\n', "\x00" * 100],
)
def test_garbled_metrics_never_raise(text: str) -> None:
    assert isinstance(tunnels_from_metrics(text), dict)


def test_a_hostile_name_cannot_move_the_cursor() -> None:
    nodes, peers = cluster()
    nodes[0]["metadata"]["name"] = "a1\x1b[2J\nforged"
    peers[0]["spec"]["endpoint"] = {"dns": "x\r\n", "port": 51820}
    state = read_cluster(nodes, peers, "topology.kubernetes.io/region")
    rep, _ = report(state, Options(), NOW)
    for fmt in ("table", "wide"):
        text = render(rep, fmt, True)
        assert "\x1b" not in text and "\r" not in text
        assert all(not line.startswith("forged") for line in text.splitlines())


@pytest.mark.parametrize("name", sorted(p.stem for p in CLUSTERS.glob("*.yaml")))
def test_every_fixture_cluster_reports(capsys: pytest.CaptureFixture[str], name: str) -> None:
    for fmt in ("table", "wide", "json", "yaml"):
        rc = kgctl.run(["status", "--from-file", str(CLUSTERS / f"{name}.yaml"), "-o", fmt])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert out
        assert all(line.startswith(("warning: ", "error: ")) for line in err.splitlines())


# -- completion and the kubectl plugin


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_name_every_subcommand(
    capsys: pytest.CaptureFixture[str], shell: str
) -> None:
    assert kgctl.run(["completion", shell]) == 0
    out = capsys.readouterr().out
    for word in ("graph", "showconf", "status", "connect", "--as-peer", "--output"):
        assert word.lstrip("-") in out


def test_bash_completion_completes(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    kgctl.run(["completion", "bash"])
    script = capsys.readouterr().out
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(["kgctl", *words])
        probe = (
            f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _kgctl; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return r.stdout.split()

    assert {"graph", "showconf", "status"} <= set(complete("''"))
    assert complete("showconf", "n") == ["node"]
    assert "--as-peer" in complete("showconf", "node", "--as")
    assert complete("status", "-o", "''") == ["table", "wide", "json", "yaml"]


def test_kubectl_kilo_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kgctl.run(["--help"], prog="kubectl kilo")
    assert capsys.readouterr().out.startswith("usage: kubectl kilo")
