"""Peer admission against a real API server: the ValidatingAdmissionPolicy
(manifests/peer-policy.yaml) refuses what one Peer can get wrong by itself, and ``kg webhook``
what needs the other objects; the messages name the field. The chart renders both as the
static manifests hold them."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kilo_lab.controlplane import ControlPlane

from tests.unit.helpers import key_for, node_obj

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
POLICY = REPO / "manifests" / "peer-policy.yaml"
WEBHOOK = REPO / "manifests" / "peer-validation.yaml"
CHART = REPO / "manifests" / "helm" / "kilo"
KEY = key_for("any")

#: Upstream Kilo's Peer CRD: types only, no validation (where the policy is all there is).
UPSTREAM_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "peers.kilo.squat.ai"},
    "spec": {
        "group": "kilo.squat.ai",
        "names": {"kind": "Peer", "listKind": "PeerList", "plural": "peers", "singular": "peer"},
        "scope": "Cluster",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "required": ["allowedIPs", "publicKey"],
                                "properties": {
                                    "allowedIPs": {"type": "array", "items": {"type": "string"}},
                                    "endpoint": {
                                        "type": "object",
                                        "required": ["dnsOrIP", "port"],
                                        "properties": {
                                            "dnsOrIP": {
                                                "type": "object",
                                                "properties": {
                                                    "dns": {"type": "string"},
                                                    "ip": {"type": "string"},
                                                },
                                            },
                                            "port": {"type": "integer", "format": "int32"},
                                        },
                                    },
                                    "persistentKeepalive": {"type": "integer"},
                                    "presharedKey": {"type": "string"},
                                    "publicKey": {"type": "string"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def spec(**changes: Any) -> dict[str, Any]:
    return {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY, **changes}


def ep(port: Any = 51820, **dns_or_ip: str) -> dict[str, Any]:
    return {"dnsOrIP": dns_or_ip, "port": port}


def as_peer(name: str, s: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": name},
            "spec": s,
        }
    )


def create(cp: ControlPlane, name: str, s: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("create", "-f", "-", input=as_peer(name, s), check=False)


def eventually(what: Callable[[], bool], timeout: float = 30.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.25)


def policy_refuses(cp: ControlPlane) -> bool:
    r = create(cp, "probe-default-route", spec(allowedIPs=["0.0.0.0/0"]))
    if r.returncode == 0:
        cp.kubectl("delete", "peer", "probe-default-route", "--wait=false")
    return r.returncode != 0 and "ValidatingAdmissionPolicy" in r.stderr


def install_policy(cp: ControlPlane) -> None:
    cp.kubectl("apply", "-f", str(POLICY))
    eventually(lambda: policy_refuses(cp), why="the policy never took effect")


@pytest.fixture(scope="module")
def upstream_crd_plane(require: Any) -> Iterator[ControlPlane]:
    """A cluster with upstream Kilo's CRD and the policy."""
    require.binaries("etcd", "kube-apiserver", "kubectl")
    with ControlPlane() as cp:
        cp.kubectl("apply", "-f", "-", input=json.dumps(UPSTREAM_CRD))
        cp.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/peers.kilo.squat.ai"
        )
        install_policy(cp)
        yield cp


# (case, spec, the field the message names)
SINGLE: list[tuple[str, dict[str, Any], str]] = [
    ("cidr-garbage", spec(allowedIPs=["10.5.0.1/32", "not-a-cidr"]), "spec.allowedIPs"),
    ("cidr-no-length", spec(allowedIPs=["10.5.0.1"]), "spec.allowedIPs"),
    ("cidr-too-long", spec(allowedIPs=["10.5.0.1/33"]), "spec.allowedIPs"),
    ("cidr-zone", spec(allowedIPs=["fe80::1%eth0/128"]), "spec.allowedIPs"),
    ("default-route-4", spec(allowedIPs=["10.5.0.1/32", "0.0.0.0/0"]), "spec.allowedIPs"),
    ("default-route-6", spec(allowedIPs=["::/0"]), "spec.allowedIPs"),
    ("default-route-host-bits", spec(allowedIPs=["10.1.2.3/0"]), "spec.allowedIPs"),
    ("key-short", spec(publicKey=KEY[:40] + "eA=="), "spec.publicKey"),
    ("key-garbage", spec(publicKey="!" * 43 + "="), "spec.publicKey"),
    ("key-padding-bits", spec(publicKey=KEY[:42] + "B="), "spec.publicKey"),
    ("key-empty", spec(publicKey=""), "spec.publicKey"),
    ("psk-short", spec(presharedKey="c2hvcnQ="), "spec.presharedKey"),
    ("port-zero", spec(endpoint=ep(0, ip="192.0.2.1")), "spec.endpoint.port"),
    ("port-70000", spec(endpoint=ep(70000, ip="192.0.2.1")), "spec.endpoint.port"),
    ("keepalive-negative", spec(persistentKeepalive=-1), "spec.persistentKeepalive"),
    ("keepalive-70000", spec(persistentKeepalive=70000), "spec.persistentKeepalive"),
    ("ip-zone", spec(endpoint=ep(ip="fe80::1%eth0")), "spec.endpoint.dnsOrIP.ip"),
    ("ip-garbage", spec(endpoint=ep(ip="203.0.113.300")), "spec.endpoint.dnsOrIP.ip"),
    ("dns-underscore", spec(endpoint=ep(dns="bad_name.example.com")), "spec.endpoint.dnsOrIP.dns"),
    ("dns-upper-case", spec(endpoint=ep(dns="Peer.Example.com")), "spec.endpoint.dnsOrIP.dns"),
    ("dns-too-long", spec(endpoint=ep(dns="a." * 127 + "io")), "spec.endpoint.dnsOrIP.dns"),
    ("neither-dns-nor-ip", spec(endpoint=ep()), "spec.endpoint.dnsOrIP"),
]
VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", spec()),
    ("host-bits", spec(allowedIPs=["10.5.0.1/24", "fd00:5::1/128"])),
    ("ip-endpoint", spec(endpoint=ep(1, ip="2001:db8::7"), persistentKeepalive=65535)),
    ("dns-endpoint", spec(endpoint=ep(65535, dns="peer-1.example.com"), presharedKey=KEY)),
    ("empty-psk", spec(presharedKey="", persistentKeepalive=0)),
]


@pytest.mark.parametrize("name,s,field", SINGLE, ids=[c[0] for c in SINGLE])
def test_the_policy_refuses_a_bad_peer_naming_the_field(
    upstream_crd_plane: ControlPlane, name: str, s: dict[str, Any], field: str
) -> None:
    r = create(upstream_crd_plane, f"bad-{name}", s)
    assert r.returncode != 0, f"accepted: {s}"
    assert "ValidatingAdmissionPolicy 'peers.kilo.squat.ai'" in r.stderr, r.stderr
    assert f"denied request: {field}: " in r.stderr, r.stderr


@pytest.mark.parametrize("name,s", VALID, ids=[c[0] for c in VALID])
def test_the_policy_admits_valid_peers(
    upstream_crd_plane: ControlPlane, name: str, s: dict[str, Any]
) -> None:
    r = create(upstream_crd_plane, f"good-{name}", s)
    assert r.returncode == 0, r.stderr
    upstream_crd_plane.kubectl("delete", "peer", f"good-{name}")


def test_an_update_is_checked_too(upstream_crd_plane: ControlPlane) -> None:
    cp = upstream_crd_plane
    assert create(cp, "updated", spec()).returncode == 0
    try:
        patch = json.dumps({"spec": {"allowedIPs": ["0.0.0.0/0"]}})
        r = cp.kubectl("patch", "peer", "updated", "--type=merge", "-p", patch, check=False)
        assert r.returncode != 0 and "spec.allowedIPs: 0.0.0.0/0 is a default route" in r.stderr
    finally:
        cp.kubectl("delete", "peer", "updated")


# the webhook --------------------------------------------------------------------------------

NODES = [
    node_obj("n1", "a", pod_cidr="10.2.1.0/24", internal_ip="192.168.1.10/24"),
    node_obj("n2", "b", pod_cidr="10.2.2.0/24", internal_ip="192.168.2.10/24"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webhook_configuration(port: int) -> dict[str, Any]:
    """The shipped configuration, sent to 127.0.0.1 instead of the Service, failing closed (a
    Peer admitted must be one the webhook allowed)."""
    docs = [d for d in yaml.safe_load_all(WEBHOOK.read_text()) if d]
    (vwc,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    hook = vwc["webhooks"][0]
    hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/validate"}
    hook["failurePolicy"] = "Fail"
    return dict(vwc)


@pytest.fixture(scope="module")
def webhook_plane(require: Any, crd_installer: Any) -> Iterator[ControlPlane]:
    """A cluster with this repository's CRD, the policy, two nodes, and ``kg webhook`` (run as
    the command, on 127.0.0.1) registered with the caBundle it writes itself."""
    require.binaries("etcd", "kube-apiserver", "kubectl")
    with ControlPlane() as cp:
        crd_installer(cp)
        install_policy(cp)
        for n in NODES:
            cp.kubectl("create", "-f", "-", input=json.dumps(n))
        port = free_port()
        cp.kubectl("apply", "-f", "-", input=json.dumps(webhook_configuration(port)))
        assert cp.dir is not None
        log_path = cp.dir / "webhook.log"
        log = log_path.open("wb")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), *sys.path]))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kilo.cli.kg",
                "webhook",
                f"--kubeconfig={cp.kubeconfig}",
                f"--listen=127.0.0.1:{port}",
                "--listen-metrics=",
                "--tls-san=127.0.0.1",
                "--service-cidr=10.96.0.0/12",
                "--log-level=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            eventually(
                lambda: webhook_refuses(cp) or proc.poll() is not None,
                60,
                "the webhook never answered",
            )
            assert proc.poll() is None, log_path.read_text()
            yield cp
            proc.terminate()
            assert proc.wait(timeout=10) == 0  # SIGTERM stops it cleanly
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


def webhook_refuses(cp: ControlPlane) -> bool:
    r = create(cp, "probe-pods", spec(allowedIPs=["10.2.1.0/24"]))
    if r.returncode == 0:
        cp.kubectl("delete", "peer", "probe-pods", "--wait=false")
    return r.returncode != 0 and 'admission webhook "peers.kilo.squat.ai" denied' in r.stderr


def denial(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    prefix = 'admission webhook "peers.kilo.squat.ai" denied the request: '
    assert prefix in r.stderr, r.stderr
    return r.stderr.split(prefix, 1)[1].strip()


def test_the_webhook_wrote_its_ca_into_the_configuration(webhook_plane: ControlPlane) -> None:
    out = webhook_plane.kubectl(
        "get", "validatingwebhookconfiguration", "peers.kilo.squat.ai", "-o", "json"
    ).stdout
    bundle = json.loads(out)["webhooks"][0]["clientConfig"]["caBundle"]
    assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)


def test_the_webhook_refuses_what_the_agents_would(webhook_plane: ControlPlane) -> None:
    cp = webhook_plane
    assert (
        create(cp, "older", spec(allowedIPs=["10.5.0.0/24"], publicKey=key_for("older"))).returncode
        == 0
    )
    time.sleep(1.1)  # creation times have seconds: the tie would go by name
    try:
        msg = denial(
            create(cp, "overlap", spec(allowedIPs=["10.5.0.7/32"], publicKey=key_for("x")))
        )
        assert msg.startswith(
            "spec.allowedIPs: 10.5.0.7/32 overlaps 10.5.0.0/24 of the older Peer older"
        )
        msg = denial(
            create(cp, "node-key", spec(allowedIPs=["10.6.0.1/32"], publicKey=key_for("n2")))
        )
        assert msg.startswith("spec.publicKey: ") and "is node n2's key" in msg
        msg = denial(
            create(cp, "peer-key", spec(allowedIPs=["10.6.0.1/32"], publicKey=key_for("older")))
        )
        assert msg.startswith("spec.publicKey: ") and "is Peer older's key" in msg
        msg = denial(create(cp, "pods", spec(allowedIPs=["10.2.2.0/25"], publicKey=key_for("y"))))
        assert msg.startswith(
            "spec.allowedIPs: 10.2.2.0/25 overlaps the cluster's node n2's pod CIDR"
        )
        msg = denial(create(cp, "svc", spec(allowedIPs=["10.96.0.1/32"], publicKey=key_for("z"))))
        assert msg.startswith("spec.allowedIPs: 10.96.0.1/32 overlaps the cluster's service CIDR")
        for name in ("overlap", "node-key", "peer-key", "pods", "svc"):
            assert cp.kubectl("get", "peer", name, check=False).returncode != 0
        # valid ones pass, and an update is judged as well
        assert (
            create(cp, "fine", spec(allowedIPs=["10.6.0.1/32"], publicKey=key_for("f"))).returncode
            == 0
        )
        assert (
            create(cp, "fine6", spec(allowedIPs=["fd00:6::/64"], publicKey=key_for("g"))).returncode
            == 0
        )
        patch = json.dumps({"spec": {"allowedIPs": ["10.6.0.1/32", "10.5.0.9/32"]}})
        r = cp.kubectl("patch", "peer", "fine", "--type=merge", "-p", patch, check=False)
        assert denial(r).startswith("spec.allowedIPs: 10.5.0.9/32 overlaps 10.5.0.0/24")
        patch = json.dumps({"spec": {"allowedIPs": ["10.6.0.1/32", "10.6.1.0/24"]}})
        assert cp.kubectl("patch", "peer", "fine", "--type=merge", "-p", patch).returncode == 0
    finally:
        cp.kubectl("delete", "peer", "--all")


def test_with_the_policy_the_single_object_rules_come_first(webhook_plane: ControlPlane) -> None:
    r = create(webhook_plane, "default", spec(allowedIPs=["::/0"]))
    assert r.returncode != 0 and "ValidatingAdmissionPolicy" in r.stderr
    assert "spec.allowedIPs: ::/0 is a default route" in r.stderr
    status = json.loads(
        webhook_plane.kubectl(
            "get", "validatingadmissionpolicy", "peers.kilo.squat.ai", "-o", "json"
        ).stdout
    )["status"]
    assert not status.get("typeChecking", {}).get("expressionWarnings"), status


# the chart ---------------------------------------------------------------------------------


def render(helm: pathlib.Path, values: str, template: str) -> list[Any]:
    out = subprocess.run(
        [
            str(helm),
            "template",
            "kilo",
            str(CHART),
            "--namespace",
            "kube-system",
            "--set",
            values,
            "--show-only",
            f"templates/{template}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_chart_renders_the_static_manifests(helm: pathlib.Path) -> None:
    policy = render(helm, "peerPolicy.enabled=true", "peer-policy.yaml")
    assert policy == [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    hook = render(helm, "peerValidation.enabled=true", "peer-validation.yaml")
    assert hook == [d for d in yaml.safe_load_all(WEBHOOK.read_text()) if d]


def test_the_chart_with_admission_applies(control_plane: ControlPlane, helm: pathlib.Path) -> None:
    out = subprocess.run(
        [
            str(helm),
            "template",
            "kilo",
            str(CHART),
            "--namespace",
            "kube-system",
            "--set",
            "peerPolicy.enabled=true,peerValidation.enabled=true,peerValidation.extraArgs={--service-cidr=10.96.0.0/12}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--service-cidr=10.96.0.0/12" in out
    r = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert r.returncode == 0, r.stderr
    assert (
        "validatingadmissionpolicy.admissionregistration.k8s.io/peers.kilo.squat.ai created"
        in r.stdout
    )
    assert (
        "validatingwebhookconfiguration.admissionregistration.k8s.io/peers.kilo.squat.ai created"
        in r.stdout
    )
