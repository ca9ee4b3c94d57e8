"""The Helm chart renders every setup, the result applies to a real API server (server-side
dry run), and the static manifests are exactly what the chart renders."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from kilo_lab.controlplane import ControlPlane

pytestmark = pytest.mark.integration

MANIFESTS = pathlib.Path(__file__).resolve().parents[2] / "manifests"
CHART = MANIFESTS / "helm" / "kilo"
SETUPS = {
    "kubeadm": "platform=kubeadm,cni=kilo,wireguard=kernel",
    "kubeadm-flannel": "platform=kubeadm,cni=flannel,wireguard=kernel",
    "kubeadm-userspace": "platform=kubeadm,cni=kilo,wireguard=userspace",
    "kubeadm-flannel-userspace": "platform=kubeadm,cni=flannel,wireguard=userspace",
    "k3s": "platform=k3s,cni=kilo,wireguard=kernel",
    "k3s-flannel": "platform=k3s,cni=flannel,wireguard=kernel",
    "k3s-userspace": "platform=k3s,cni=kilo,wireguard=userspace",
    "k3s-flannel-userspace": "platform=k3s,cni=flannel,wireguard=userspace",
}


def template(helm: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "kilo", str(CHART), "--namespace", "kube-system", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("setup", SETUPS)
def test_chart_applies_with_server_dry_run(
    control_plane: ControlPlane, helm: pathlib.Path, setup: str
) -> None:
    rendered = template(helm, "--include-crds", "--set", SETUPS[setup])
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: DaemonSet" in rendered.stdout
    applied = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=rendered.stdout, check=False
    )
    assert applied.returncode == 0, applied.stderr
    assert "daemonset.apps/kilo created (server dry run)" in applied.stdout


@pytest.mark.parametrize("setup", [s for s in SETUPS if (MANIFESTS / f"kilo-{s}.yaml").exists()])
def test_static_manifest_is_the_rendered_chart(helm: pathlib.Path, setup: str) -> None:
    static = (MANIFESTS / f"kilo-{setup}.yaml").read_text()
    rendered = template(helm, "--set", SETUPS[setup])
    assert rendered.returncode == 0, rendered.stderr
    header, body = static.split("---\n", 1)  # render.sh puts two comment lines first
    assert all(line.startswith("# ") for line in header.splitlines())
    assert "---\n" + body == rendered.stdout, "stale: run manifests/render.sh"


def test_static_manifests_apply(control_plane: ControlPlane) -> None:
    for path in sorted(MANIFESTS.glob("kilo-*.yaml")):
        applied = control_plane.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
        assert applied.returncode == 0, f"{path.name}: {applied.stderr}"


def test_chart_carries_the_same_crd() -> None:
    assert (CHART / "crds" / "crds.yaml").read_text() == (MANIFESTS / "crds.yaml").read_text()


def test_agent_flags_follow_the_setup(helm: pathlib.Path) -> None:
    flannel = template(helm, "--set", SETUPS["kubeadm-flannel-userspace"]).stdout
    for flag in (
        "--cni=false",
        "--compatibility=flannel",
        "--local=false",
        "--internal-cidr=$(NODE_IP)/32",
        "--create-interface=false",
        "--interface=kilo0",
        "--hostname=$(NODE_NAME)",
    ):
        assert f"- {flag}\n" in flannel
    assert "install-cni" not in flannel and "wireguard-go" in flannel
    plain = template(helm).stdout
    assert "--cni=false" not in plain and "install-cni" in plain and "wireguard-go" not in plain


def test_unknown_setup_is_refused(helm: pathlib.Path) -> None:
    result = template(helm, "--set", "platform=minikube")
    assert result.returncode != 0
    assert "platform must be kubeadm or k3s" in result.stderr


def test_chart_lints(helm: pathlib.Path) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
