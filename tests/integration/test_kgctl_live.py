"""kgctl against the live cluster prints exactly what it prints for a saved dump of it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest
from kilo_lab.controlplane import ControlPlane

pytestmark = pytest.mark.integration

KEYS = [
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "8J+Ri/CfkYvwn5GL8J+Ri/CfkYvwn5GL8J+Ri/CfkYs=",
    "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
]


def node(name: str, i: int, location: str, now: int) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"topology.kubernetes.io/region": location},
                "annotations": {
                    "kilo.squat.ai/key": KEYS[i],
                    "kilo.squat.ai/wireguard-ip": f"10.4.0.{i + 1}/16",
                    "kilo.squat.ai/endpoint": f"198.51.100.{i + 1}:51820",
                    "kilo.squat.ai/internal-ip": f"172.16.{i}.1/24",
                    "kilo.squat.ai/last-seen": str(now),
                    "kilo.squat.ai/granularity": "location",
                },
            },
            "spec": {"podCIDR": f"10.244.{i + 10}.0/24"},
        }
    )


PEER = json.dumps(
    {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": "kgctl-laptop"},
        "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEYS[2], "persistentKeepalive": 10},
    }
)


def kgctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def dump(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    now = int(time.time())
    for i, (name, location) in enumerate([("kgctl-a", "eu"), ("kgctl-b", "us")]):
        control_plane.kubectl("create", "-f", "-", input=node(name, i, location, now))
    control_plane.kubectl("create", "-f", "-", input=PEER)
    path = tmp_path_factory.mktemp("kpy-kgctl") / "cluster.yaml"
    path.write_text(control_plane.kubectl("get", "nodes,peers", "-o", "yaml").stdout)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("showconf", "node", "kgctl-a"),
        ("showconf", "node", "kgctl-b", "--as-peer", "-o", "yaml"),
        ("showconf", "peer", "kgctl-laptop"),
        ("showconf", "node", "kgctl-a", "--mesh-granularity", "full"),
        ("graph",),
        ("status", "--mesh-granularity", "location"),
    ],
    ids=lambda a: "-".join(a),
)
def test_live_equals_from_file(
    control_plane: ControlPlane, dump: pathlib.Path, args: tuple[str, ...]
) -> None:
    live = kgctl("--kubeconfig", str(control_plane.kubeconfig), *args)
    now = str(int(time.time()))
    saved = kgctl("--from-file", str(dump), "--now", now, *args)
    assert live.returncode == 0, live.stderr
    assert saved.returncode == 0, saved.stderr
    assert live.stdout and live.stdout == saved.stdout


def test_kubeconfig_from_environment(
    control_plane: ControlPlane, dump: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    result = kgctl("showconf", "node", "kgctl-a")
    assert result.returncode == 0, result.stderr
    assert "[Interface]" in result.stdout and "PublicKey" in result.stdout
