"""Where the third-party binaries (kube-apiserver, etcd, kubectl, helm, ...) are.

``locate(name)`` honours ``KILO_BIN_<NAME>`` (upper case, dashes as underscores) first; otherwise it
asks ``hack/binaries.sh NAME``, which reuses or builds a pinned, cached copy and prints
``NAME=PATH``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess

KNOWN = (
    "kube-apiserver",
    "etcd",
    "kubectl",
    "kube-proxy",
    "kube-controller-manager",
    "helm",
    "wireguard-go",
    "flanneld",
)


class BinaryMissing(RuntimeError):
    """A binary could not be found or built; the message names it and says why."""


def env_var(name: str) -> str:
    """The environment variable that overrides the location of ``name``."""
    return "KILO_BIN_" + name.upper().replace("-", "_")


def repo_root() -> pathlib.Path | None:
    """The source checkout this module lives in, if it is run from one."""
    for parent in pathlib.Path(__file__).resolve().parents:
        if (parent / "hack" / "binaries.sh").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    return None


@functools.cache
def locate(name: str) -> pathlib.Path:
    """The path of an executable ``name``; raises BinaryMissing with the reason otherwise."""
    if name not in KNOWN:
        raise BinaryMissing(f"{name}: unknown binary (known: {', '.join(KNOWN)})")
    override = os.environ.get(env_var(name))
    if override:
        path = pathlib.Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BinaryMissing(f"{name}: {env_var(name)}={override} is not an executable file")
        return path
    root = repo_root()
    if root is None:
        raise BinaryMissing(
            f"{name}: {env_var(name)} is not set and hack/binaries.sh is not available "
            "(not running from a source checkout)"
        )
    script = root / "hack" / "binaries.sh"
    proc = subprocess.run(["bash", str(script), name], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BinaryMissing(f"{name}: {script} failed (exit {proc.returncode}): {tail}")
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == name:
            path = pathlib.Path(value.strip())
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise BinaryMissing(f"{name}: {script} printed {value!r}, which is not executable")
    raise BinaryMissing(f"{name}: {script} printed no '{name}=PATH' line")
