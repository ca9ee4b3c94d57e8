"""``wg`` and ``wireguard-go`` as the lab runs them, each with a socket directory of its own.

wireguard-go keeps its UAPI socket in ``/var/run/wireguard``, a directory all network
namespaces share, so every process of the lab that serves or reads a socket runs with its own
directory bound over it (``netns.command_with_mount``): kg's (``layout.kg_socket_dir``, the
product's convention) for a node, one under the lab's state directory for a peer host.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

from kilo_lab import netns, procs
from kilo_lab.binaries import locate
from kilo_lab.errors import LabError
from kilo_lab.poll import wait_until

WG_RUN_DIR = "/var/run/wireguard"


def wg_argv(namespace: str, socket_dir: str | os.PathLike[str], *args: str) -> list[str]:
    """``wg ARGS`` in ``namespace`` seeing the sockets in ``socket_dir``."""
    return netns.command_with_mount(namespace, str(socket_dir), WG_RUN_DIR, ["wg", *args])


def start_wireguard_go(
    namespace: str, socket_dir: pathlib.Path, iface: str, timeout: float = 10.0
) -> subprocess.Popen[bytes]:
    """The pinned wireguard-go serving ``iface`` in ``namespace`` (in the foreground, logging to
    ``socket_dir/<iface>.log``); returns once its UAPI socket is there."""
    socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = socket_dir / f"{iface}.sock"
    log_file = socket_dir / f"{iface}.log"
    proc = procs.start(
        netns.with_mount(str(socket_dir), WG_RUN_DIR, [str(locate("wireguard-go")), "-f", iface]),
        netns_name=namespace,
        log_file=log_file,
        env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise LabError(f"wireguard-go {iface} in {namespace} exited: {procs.tail(log_file)}")
        return sock.is_socket()

    wait_until(f"wireguard-go {iface} in {namespace}", listening, timeout, 0.05, error=LabError)
    return proc
