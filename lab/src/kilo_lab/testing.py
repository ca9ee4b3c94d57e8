"""Helpers and pytest fixtures for tests that use the lab as a harness (the product's
integration tests, the lab's own tests).

A conftest imports what it offers::

    from kilo_lab.testing import control_plane, crd_installer, helm, require  # fixtures

Where the binaries are missing (or root is needed and absent) the tests are skipped with the
reason, except in CI (CI=true), where they fail instead.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from collections.abc import Callable, Iterator

import pytest

from kilo_lab import pods
from kilo_lab.binaries import BinaryMissing, locate, repo_root
from kilo_lab.controlplane import ControlPlane

REPO = repo_root() or pathlib.Path.cwd()
MANIFESTS = REPO / "manifests"
CRDS = MANIFESTS / "crds.yaml"


def unavailable(reason: str) -> None:
    """Skip, or in CI fail, with ``reason``."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


def need_binaries(*names: str) -> None:
    for name in names:
        try:
            locate(name)
        except BinaryMissing as err:
            unavailable(f"binary missing: {err}")


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (network namespaces)")


def need_lab(*binaries: str) -> None:
    """What a lab needs: root, the CNI plugins, etcd, kube-apiserver, kube-controller-manager,
    kubectl and ``binaries`` (the agent's labs add wireguard-go, kube-proxy)."""
    need_root()
    need_binaries("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", *binaries)
    reason = pods.plugins_available()
    if reason:
        unavailable(reason)


def root_snapshot() -> dict[str, str]:
    """What a lab must not change in the root namespace: links, addresses (without their
    lifetimes), routes, rules, nftables tables."""

    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            return f"({argv[0]} not installed)"

    links = sorted(re.findall(r"^\d+: ([^:@]+)", out("ip", "-o", "link", "show"), re.MULTILINE))
    addrs = re.sub(r"\s+(?:valid_lft|preferred_lft)\s+\S+", "", out("ip", "-o", "addr", "show"))
    return {
        "links": "\n".join(links),
        "addrs": addrs,
        "routes4": out("ip", "-4", "route", "show", "table", "all"),
        "routes6": out("ip", "-6", "route", "show", "table", "all"),
        "rules4": out("ip", "-4", "rule", "show"),
        "rules6": out("ip", "-6", "rule", "show"),
        "nft": out("nft", "list", "tables"),
    }


def install_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "-f", str(CRDS))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/peers.kilo.squat.ai")


class Require:
    """Preconditions a test states; unmet ones skip it (fail it in CI)."""

    binaries = staticmethod(need_binaries)
    root = staticmethod(need_root)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One cluster for the session, with the Peer CRD installed."""
    need_binaries("etcd", "kube-apiserver", "kubectl")
    with ControlPlane() as cp:
        install_crd(cp)
        yield cp


@pytest.fixture(scope="session")
def helm() -> pathlib.Path:
    need_binaries("helm")
    return locate("helm")


@pytest.fixture(scope="session")
def require() -> Require:
    return Require()


@pytest.fixture(scope="session")
def crd_installer() -> Callable[[ControlPlane], None]:
    """Installs manifests/crds.yaml into a control plane and waits until it is served."""
    return install_crd
