"""Packs directories into a container image, reproducibly: an OCI image layout (a directory) and
a tar that `docker load` reads (it is also the OCI layout, archived, as `docker save` writes it).

    python3 hack/oci_pack.py --layer ROOTFS [--exclude PATH] --layer STAGE --only usr/local \\
        --ref REPO:TAG --epoch SOURCE_DATE_EPOCH --oci OUT/oci --archive OUT/image.tar

Each --layer is a directory whose tree (or the --only subtrees of it, with their parents)
becomes one gzip layer. The bytes depend only on the files: entries sorted, mtimes clamped to
--epoch, owners numeric without names, gzip without a name or time, JSON with sorted keys.
Prints the manifest's digest. Standard library only (hack/image.sh runs it with any Python 3.11).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import stat
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass
class Layer:
    root: pathlib.Path
    only: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _walk(root: pathlib.Path, rel: str) -> Iterator[str]:
    """rel and everything under it, depth first in sorted order (a directory before its files)."""
    yield rel
    path = root / rel if rel else root
    if path.is_dir() and not path.is_symlink():
        for name in sorted(os.listdir(path)):
            yield from _walk(root, f"{rel}/{name}" if rel else name)


def layer_paths(layer: Layer) -> list[str]:
    """The relative paths of a layer, parents of --only subtrees included, sorted."""
    wanted: set[str] = set()
    for top in layer.only or [""]:
        top = top.strip("/")
        parts = top.split("/") if top else []
        wanted.update("/".join(parts[:i]) for i in range(1, len(parts)))
        wanted.update(_walk(layer.root, top))
    wanted.discard("")
    excluded = tuple(e.strip("/") for e in layer.exclude)
    kept = [p for p in wanted if not any(p == e or p.startswith(e + "/") for e in excluded)]
    return sorted(kept, key=lambda p: p.split("/"))


def _tarinfo(
    root: pathlib.Path, rel: str, epoch: int, seen: dict[tuple[int, int], str]
) -> tarfile.TarInfo | None:
    st = os.lstat(root / rel)
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
    info.mtime = min(int(st.st_mtime), epoch)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(root / rel)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            info.type, info.linkname = tarfile.LNKTYPE, seen[key]
        else:
            seen[key] = rel
            info.type, info.size = tarfile.REGTYPE, st.st_size
    else:
        return None  # devices, fifos, sockets: the runtime makes its own
    return info


class _Sink(io.RawIOBase):
    """Hashes what is written (the layer's diff ID) and passes it on to gzip."""

    def __init__(self, out: BinaryIO) -> None:
        self.sha = hashlib.sha256()
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.out.write(data)
        return len(data)


def write_layer(layer: Layer, epoch: int, blobs: pathlib.Path) -> tuple[Blob, str]:
    """Writes one gzip layer into blobs/; returns its blob and its diff ID."""
    tmp = blobs / ".layer.tmp"
    with tmp.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            sink = _Sink(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                seen: dict[tuple[int, int], str] = {}
                for rel in layer_paths(layer):
                    info = _tarinfo(layer.root, rel, epoch, seen)
                    if info is None:
                        continue
                    if info.type == tarfile.REGTYPE:
                        with (layer.root / rel).open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    blob = _store_file(tmp, blobs)
    return blob, "sha256:" + sink.sha.hexdigest()


def _store_file(tmp: pathlib.Path, blobs: pathlib.Path) -> Blob:
    sha = hashlib.sha256()
    with tmp.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    size = tmp.stat().st_size
    tmp.rename(blobs / sha.hexdigest())
    return Blob("sha256:" + sha.hexdigest(), size)


def store_bytes(data: bytes, blobs: pathlib.Path) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return Blob("sha256:" + digest, len(data))


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def image_config(
    diff_ids: Sequence[str], epoch: int, created_by: Sequence[str], labels: dict[str, str]
) -> dict[str, Any]:
    when = rfc3339(epoch)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": when,
        "config": {
            "Env": [PATH_ENV, "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
            "Entrypoint": ["/usr/local/bin/kg"],
            "Cmd": ["--help"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": when, "created_by": c} for c in created_by],
    }


def descriptor(media: str, blob: Blob, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media, "digest": blob.digest, "size": blob.size, **extra}


def pack(
    layers: Sequence[Layer],
    *,
    ref: str,
    epoch: int,
    oci: pathlib.Path,
    created_by: Sequence[str] = (),
    labels: dict[str, str] | None = None,
) -> tuple[Blob, Blob, list[Blob]]:
    """Writes the OCI layout into oci/; returns the manifest's, the config's and the layers'
    blobs."""
    blobs = oci / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    written = [write_layer(layer, epoch, blobs) for layer in layers]
    history = list(created_by) + [""] * (len(layers) - len(created_by))
    config = store_bytes(
        canonical(image_config([d for _, d in written], epoch, history, dict(labels or {}))),
        blobs,
    )
    manifest = store_bytes(
        canonical(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": descriptor(MEDIA_CONFIG, config),
                "layers": [descriptor(MEDIA_LAYER, b) for b, _ in written],
                "annotations": {"org.opencontainers.image.created": rfc3339(epoch)},
            }
        ),
        blobs,
    )
    tag = ref.rsplit(":", 1)[1]
    names = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [descriptor(MEDIA_MANIFEST, manifest, annotations=names)],
    }
    (oci / "index.json").write_bytes(canonical(index))
    (oci / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest, config, [b for b, _ in written]


def write_archive(
    oci: pathlib.Path,
    archive: pathlib.Path,
    ref: str,
    config: Blob,
    layers: Sequence[Blob],
    epoch: int,
) -> None:
    """The OCI layout plus Docker's manifest.json, in one tar, as `docker save` writes it."""
    docker = [
        {
            "Config": "blobs/sha256/" + config.digest.split(":")[1],
            "RepoTags": [ref],
            "Layers": ["blobs/sha256/" + b.digest.split(":")[1] for b in layers],
        }
    ]
    entries: dict[str, bytes | pathlib.Path | None] = {"blobs": None, "blobs/sha256": None}
    for blob in sorted((oci / "blobs" / "sha256").iterdir()):
        entries[f"blobs/sha256/{blob.name}"] = blob
    entries["index.json"] = oci / "index.json"
    entries["oci-layout"] = oci / "oci-layout"
    entries["manifest.json"] = canonical(docker)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            value = entries[name]
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, bytes):
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
            else:
                info.size, info.mode = value.stat().st_size, 0o644
                with value.open("rb") as data:
                    tar.addfile(info, data)
    tmp.rename(archive)


class _LayerOption(argparse.Action):
    """--layer starts a layer; --only and --exclude add to the last one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        value: Any,
        option: str | None = None,
    ) -> None:
        layers: list[Layer] = ns.layers
        if option == "--layer":
            layers.append(Layer(pathlib.Path(value)))
        elif not layers:
            parser.error(f"{option} before any --layer")
        else:
            getattr(layers[-1], (option or "").lstrip("-")).append(value)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.set_defaults(layers=[])
    for opt in ("--layer", "--only", "--exclude"):
        p.add_argument(opt, action=_LayerOption, metavar="PATH")
    p.add_argument("--ref", required=True, help="REPOSITORY:TAG")
    p.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH")
    p.add_argument("--oci", type=pathlib.Path, required=True, help="the OCI layout to write")
    p.add_argument("--archive", type=pathlib.Path, help="the docker-archive tar to write")
    p.add_argument("--created-by", action="append", default=[], help="history, one per layer")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    a = p.parse_args(argv)
    if not a.layers:
        p.error("no --layer")
    if ":" not in a.ref.rsplit("/", 1)[-1]:
        p.error(f"--ref {a.ref!r} has no tag")
    labels = dict(kv.split("=", 1) for kv in a.label)
    manifest, config, layers = pack(
        a.layers, ref=a.ref, epoch=a.epoch, oci=a.oci, created_by=a.created_by, labels=labels
    )
    if a.archive:
        write_archive(a.oci, a.archive, a.ref, config, layers, a.epoch)
    print(manifest.digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
