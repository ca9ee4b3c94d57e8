"""kg from the container image: a node's agent run from the image's unpacked root filesystem.

With ``KPY_LAB_IMAGE_ROOT=DIR`` (a root filesystem unpacked from the image hack/image.sh builds,
e.g. by ``python3 hack/oci_check.py unpack build/image/oci DIR``), the lab starts every node's
``kg`` as ``chroot DIR /usr/local/bin/kg ...`` inside the node's network namespace: the image's
Python, dependencies, ``ip``, ``nft``, ``unshare``, ``mount`` and ``wireguard-go`` instead of the
machine's. As a privileged container would, it sees the machine's /proc, /sys, /dev, /run and
/tmp: DIR is bound onto itself and those into it, in a private mount namespace of that one
process, so nothing leaks to the machine or to the other nodes (the binds go with the process).
``KILO_BIN_WIREGUARD_GO`` is dropped: kg finds the image's wireguard-go on PATH, as in a DaemonSet.
"""

from __future__ import annotations

import os
import pathlib

IMAGE_ROOT_ENV = "KPY_LAB_IMAGE_ROOT"
BOUND = ("proc", "sys", "dev", "run", "tmp")
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_root() -> pathlib.Path | None:
    """The unpacked image kg should run from (``$KPY_LAB_IMAGE_ROOT``), or None."""
    value = os.environ.get(IMAGE_ROOT_ENV)
    return pathlib.Path(value) if value else None


def kg_argv(root: pathlib.Path) -> list[str]:
    """The argv prefix running the image's ``kg`` (its flags follow) from ``root``."""
    binds = " && ".join(f'mount --rbind "/{d}" "$r/{d}"' for d in BOUND)
    script = (
        # the root a mount point of its own (as a container's is), or kg's own `unshare --mount
        # --propagation private` cannot change its propagation
        f'r=$1; shift; mount --bind "$r" "$r" && {binds} && exec chroot "$r" '
        "/usr/bin/env -u KILO_BIN_WIREGUARD_GO "
        f'PATH={IMAGE_PATH} PYTHONDONTWRITEBYTECODE=1 /usr/local/bin/kg "$@"'
    )
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "sh", "-c", script, "kpy-image-kg", str(root)]
