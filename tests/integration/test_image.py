"""The container image (hack/image.sh): two builds give the same digest, the OCI layout and the
docker-archive are valid and carry the tag the manifests name, the CLIs run from the image's
root filesystem, and a lab whose agents run from that root filesystem (KPY_LAB_IMAGE_ROOT)
comes up and carries pods' traffic across locations."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest
from kilo_lab.imageroot import IMAGE_ROOT_ENV

from tests.integration.conftest import MANIFESTS, REPO, need_root, unavailable
from tests.integration.test_agent_support import agent_lab, lab_name, two_locations

pytestmark = pytest.mark.integration


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oci_check = _module("oci_check")


@dataclass(frozen=True)
class Build:
    ref: str
    digest: str
    oci: pathlib.Path
    archive: pathlib.Path


def build(out: pathlib.Path) -> Build:
    r = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    fields = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return Build(
        fields["ref"],
        fields["digest"],
        pathlib.Path(fields["oci"]),
        pathlib.Path(fields["archive"]),
    )


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    need_root()
    if shutil.which("mmdebstrap") is None:
        unavailable("mmdebstrap is missing (bash hack/setup.sh installs it)")
    d = pathlib.Path(tempfile.mkdtemp(prefix="kpy-image-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def image(workdir: pathlib.Path) -> Build:
    return build(workdir / "a")


@pytest.fixture(scope="module")
def root(image: Build, workdir: pathlib.Path) -> pathlib.Path:
    dest = workdir / "root"
    oci_check.unpack(image.oci, dest)
    return dest


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_give_the_same_digest(image: Build, workdir: pathlib.Path) -> None:
    again = build(workdir / "b")
    assert again.digest == image.digest
    assert sha256(again.archive) == sha256(image.archive)
    assert (image.oci.parent / "digest").read_text().strip() == image.digest


def test_the_oci_layout_and_the_docker_archive_are_valid(image: Build) -> None:
    assert oci_check.verify(image.oci) == []
    assert oci_check.verify_archive(image.archive, image.oci) == []
    index = (image.oci / "index.json").read_text()
    assert image.digest in index
    manifest, config = oci_check.manifest_of(image.oci)
    assert len(manifest["layers"]) == 2
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/kg"]


def test_the_manifests_name_the_tag_the_build_makes(image: Build) -> None:
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert version is not None
    assert image.ref.endswith(":" + version.group(1))
    assert oci_check.repo_tags(image.archive) == [image.ref]
    refs = set()
    for path in [*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("helm/kilo/templates/*.yaml")]:
        refs.update(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.M))
    refs.discard('{{ include "kilo.image" . }}')
    assert refs == {image.ref}, "manifests name another image: change them (and render.sh)"
    values = (MANIFESTS / "helm" / "kilo" / "values.yaml").read_text()
    repository, tag = image.ref.rsplit(":", 1)
    assert values.count(f"repository: {repository}\n") == 2  # the agent and the side-car
    assert values.count(f'tag: "{tag}"\n') == 2


def run_in(root: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"]
    return subprocess.run(
        ["chroot", str(root), *env, *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["kg", "--help"], "usage: kg"),
        (["kgctl", "--help"], "usage: kgctl"),
        (["kubectl-kilo", "--help"], "usage:"),
        (["wireguard-go", "--version"], "wireguard-go v"),
        (["wg", "--version"], "wireguard-tools"),
        (["nft", "--version"], "nftables"),
        (["ip", "-V"], "iproute2"),
        # what kg's userspace WireGuard path and the manifests' init containers run
        (
            [
                "sh",
                "-c",
                "for c in unshare nsenter mount cp find mv sed head cat; do command -v $c; done",
            ],
            "/cat",
        ),
        (["ls", "/opt/cni/bin"], "bridge\nhost-local\nloopback\nportmap"),
    ],
)
def test_the_image_runs(root: pathlib.Path, argv: list[str], expected: str) -> None:
    r = run_in(root, *argv)
    assert r.returncode == 0, r.stderr
    assert expected in r.stdout


def test_the_dependencies_import_inside(root: pathlib.Path) -> None:
    code = (
        "import kilo.backend.kubernetes, kilo.dataplane.wgdevice, kilo.dataplane.nftables, "
        "cryptography, yaml, prometheus_client, pyroute2, kubernetes; print(kilo.__file__)"
    )
    r = run_in(root, "python3", "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("/usr/local/lib/python3.11/dist-packages/kilo/")


def test_a_mesh_of_agents_run_from_the_image(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(root))
    with agent_lab(two_locations(lab_name("aimg"))) as (lab, _):
        for node in ("a1", "g2"):  # each agent is the image's: its root is the image's
            assert os.readlink(f"/proc/{lab.agents[node].pid}/root") == str(root)
        a, g = "a2-p0", "g2-p0"
        lab.wait_ping(a, lab.pods[g].address, timeout=30)
        lab.wait_ping(g, lab.pods[a].address, timeout=30)
