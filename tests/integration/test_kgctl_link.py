"""``kgctl link`` between two real API servers: each cluster's leaders become Peers in the other,
follow a leader change and a key change while the link runs, never touch a Peer the link did not
make, and ``--unlink`` removes exactly what the link made."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kilo_lab.controlplane import ControlPlane
from kilo_lab.testing import install_crd

pytestmark = pytest.mark.integration

LABEL = "kilo.squat.ai/linked-from"


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def node(name: str, i: int, location: str, seen: int, k: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"topology.kubernetes.io/region": location},
            "annotations": {
                "kilo.squat.ai/key": k or key(name),
                "kilo.squat.ai/endpoint": f"198.51.100.{i + 1}:51820",
                "kilo.squat.ai/internal-ip": f"172.16.{i}.1/24",
                "kilo.squat.ai/last-seen": str(seen),
                "kilo.squat.ai/granularity": "location",
            },
        },
        "spec": {"podCIDR": f"10.{i + 100}.0.0/24"},
    }


def apply(cp: ControlPlane, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps(obj))


def peers(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    out = cp.kubectl("get", "peers", "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def kgctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def clusters(require: Any) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    require.binaries("etcd", "kube-apiserver", "kubectl")
    with ControlPlane() as c1, ControlPlane() as c2:
        install_crd(c1)
        install_crd(c2)
        now = int(time.time())
        # c1: two locations, eu with two nodes (eu-1 leads: lowest name among equals)
        for i, (name, loc) in enumerate([("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]):
            apply(c1, node(name, i, loc, now))
        apply(c2, node("dc-1", 10, "dc", now))
        yield c1, c2


def link_args(c1: ControlPlane, c2: ControlPlane, *more: str) -> list[str]:
    return ["--kubeconfig", str(c1.kubeconfig), "link", "--name", "c1", "--to-kubeconfig",
            str(c2.kubeconfig), "--to-name", "c2", "--allowed-ips", "10.96.0.0/12",
            "--to-allowed-ips", "10.112.0.0/12", *more]  # fmt: skip


def test_once_exports_each_clusters_leaders_into_the_other(
    clusters: tuple[ControlPlane, ControlPlane],
) -> None:
    c1, c2 = clusters
    # a Peer nobody linked, under the name the link would use: left alone, reported
    apply(c2, {"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
               "metadata": {"name": "c1-us-1"},
               "spec": {"allowedIPs": ["10.5.0.9/32"], "publicKey": key("mine")}})  # fmt: skip
    r = kgctl(*link_args(c1, c2, "--once"))
    assert r.returncode == 1 and "c1-us-1: exists and is not this link's" in r.stderr, r.stderr
    in2, in1 = peers(c2), peers(c1)
    assert in2["c1-eu-1"]["metadata"]["labels"] == {LABEL: "c1"}
    assert in2["c1-eu-1"]["spec"]["publicKey"] == key("eu-1")
    assert "10.96.0.0/12" in in2["c1-eu-1"]["spec"]["allowedIPs"]
    assert {"10.100.0.0/24", "10.101.0.0/24"} <= set(in2["c1-eu-1"]["spec"]["allowedIPs"])
    assert "c1-eu-2" not in in2  # not a leader
    assert in2["c1-us-1"]["spec"]["publicKey"] == key("mine")  # untouched
    assert "labels" not in in2["c1-us-1"]["metadata"]
    assert set(in1) == {"c2-dc-1"} and "10.112.0.0/12" in in1["c2-dc-1"]["spec"]["allowedIPs"]
    c2.kubectl("delete", "peer", "c1-us-1")
    assert kgctl(*link_args(c1, c2, "--once")).returncode == 0
    assert {"c1-eu-1", "c1-us-1"} <= set(peers(c2))


def test_the_running_link_follows_a_leader_change_and_a_new_key(
    clusters: tuple[ControlPlane, ControlPlane],
) -> None:
    c1, c2 = clusters
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilo.cli.kgctl", *link_args(c1, c2, "--resync-period", "1s")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:

        def wait_for(check: Any) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if check(peers(c2)):
                    return
                time.sleep(0.3)
            raise AssertionError(f"not reached: {sorted(peers(c2))}")

        wait_for(lambda p: "c1-eu-1" in p)
        # eu-1 stops checking in: eu-2 leads eu, and its Peer replaces eu-1's
        apply(c1, node("eu-1", 0, "eu", int(time.time()) - 600))
        wait_for(lambda p: "c1-eu-2" in p and "c1-eu-1" not in p)
        # us-1 gets a new key: its Peer follows
        apply(c1, node("us-1", 2, "us", int(time.time()), k=key("us-1-rotated")))
        wait_for(lambda p: p["c1-us-1"]["spec"]["publicKey"] == key("us-1-rotated"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "c1-eu-2" in peers(c2)  # a stopped link keeps the Peers; --unlink removes them


def test_unlink_removes_exactly_what_the_link_made(
    clusters: tuple[ControlPlane, ControlPlane],
) -> None:
    c1, c2 = clusters
    apply(c2, {"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
               "metadata": {"name": "laptop"},
               "spec": {"allowedIPs": ["10.5.0.7/32"], "publicKey": key("laptop")}})  # fmt: skip
    assert kgctl(*link_args(c1, c2, "--once")).returncode == 0
    r = kgctl(*link_args(c1, c2, "--unlink"))
    assert r.returncode == 0, r.stderr
    assert set(peers(c2)) == {"laptop"}
    assert set(peers(c1)) == set()
