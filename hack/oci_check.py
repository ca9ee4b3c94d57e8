"""Checks and unpacks what hack/oci_pack.py writes, with the standard library only.

    python3 hack/oci_check.py verify OCI_DIR [ARCHIVE]   every digest and size, the config's
                                                         diff IDs, docker's manifest.json
    python3 hack/oci_check.py unpack OCI_DIR DEST        the image's root filesystem into DEST

Problems are returned as a list of sentences (verify prints them and exits 1).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pathlib
import sys
import tarfile
from collections.abc import Sequence
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha256(path: pathlib.Path, *, gunzip: bool = False) -> str:
    sha = hashlib.sha256()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def blob_path(oci: pathlib.Path, digest: str) -> pathlib.Path:
    algorithm, _, hexdigest = digest.partition(":")
    return oci / "blobs" / algorithm / hexdigest


def _load(path: pathlib.Path) -> Any:
    return json.loads(path.read_bytes())


def manifest_of(oci: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The layout's one image manifest and its config."""
    index = _load(oci / "index.json")
    (desc,) = index["manifests"]
    manifest = _load(blob_path(oci, desc["digest"]))
    return manifest, _load(blob_path(oci, manifest["config"]["digest"]))


def _check_descriptor(oci: pathlib.Path, desc: dict[str, Any], what: str) -> list[str]:
    path = blob_path(oci, desc["digest"])
    if not path.is_file():
        return [f"{what}: blob {desc['digest']} is missing"]
    problems = []
    if path.stat().st_size != desc["size"]:
        problems.append(f"{what}: size {path.stat().st_size} != descriptor's {desc['size']}")
    if _sha256(path) != desc["digest"]:
        problems.append(f"{what}: content does not hash to {desc['digest']}")
    return problems


def verify(oci: pathlib.Path) -> list[str]:
    """Every problem of the OCI layout at oci (none: an empty list)."""
    problems: list[str] = []
    if _load(oci / "oci-layout").get("imageLayoutVersion") != "1.0.0":
        problems.append("oci-layout: imageLayoutVersion is not 1.0.0")
    index = _load(oci / "index.json")
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        return [*problems, "index.json: not schemaVersion 2 with one manifest"]
    desc = index["manifests"][0]
    if desc.get("mediaType") != MEDIA_MANIFEST:
        problems.append(f"index.json: manifest media type {desc.get('mediaType')}")
    problems += _check_descriptor(oci, desc, "manifest")
    if problems:
        return problems
    manifest, config = manifest_of(oci)
    problems += _check_descriptor(oci, manifest["config"], "config")
    for i, layer in enumerate(manifest["layers"]):
        problems += _check_descriptor(oci, layer, f"layer {i}")
    diff_ids = [
        _sha256(blob_path(oci, layer["digest"]), gunzip=True) for layer in manifest["layers"]
    ]
    if diff_ids != config["rootfs"]["diff_ids"]:
        problems.append("config: rootfs.diff_ids are not the layers' uncompressed digests")
    return problems


def verify_archive(archive: pathlib.Path, oci: pathlib.Path) -> list[str]:
    """Problems of the docker-archive tar: its manifest.json names the layout's config and
    layers, in order, each present in the tar with the layout's bytes."""
    manifest, _ = manifest_of(oci)
    problems: list[str] = []
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        member = tar.extractfile("manifest.json")
        if member is None:
            return ["archive: no manifest.json"]
        (docker,) = json.loads(member.read())
        want = ["blobs/sha256/" + d["digest"].split(":")[1] for d in manifest["layers"]]
        if docker["Layers"] != want:
            problems.append("archive: manifest.json Layers are not the image's layers")
        if docker["Config"] != "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]:
            problems.append("archive: manifest.json Config is not the image's config")
        for name in [docker["Config"], *docker["Layers"], "index.json", "oci-layout"]:
            if name not in names:
                problems.append(f"archive: {name} is missing")
                continue
            f = tar.extractfile(name)
            data = f.read() if f else b""
            if data != (oci / name).read_bytes():
                problems.append(f"archive: {name} differs from the layout's")
    return problems


def repo_tags(archive: pathlib.Path) -> list[str]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        tags: list[str] = json.loads(member.read())[0]["RepoTags"]
        return tags


def unpack(oci: pathlib.Path, dest: pathlib.Path) -> None:
    """Extracts the layers in order into dest (owners, modes and links kept; our layers carry
    no whiteouts, so none are handled)."""
    manifest, _ = manifest_of(oci)
    dest.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(blob_path(oci, layer["digest"]), "r:gz") as tar:
            tar.extractall(dest, numeric_owner=True, filter="fully_trusted")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) in (2, 3) and args[0] == "verify":
        problems = verify(pathlib.Path(args[1]))
        if len(args) == 3 and not problems:
            problems = verify_archive(pathlib.Path(args[2]), pathlib.Path(args[1]))
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    if len(args) == 3 and args[0] == "unpack":
        unpack(pathlib.Path(args[1]), pathlib.Path(args[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
