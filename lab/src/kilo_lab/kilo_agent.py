"""Kilo 0.7's own Go agent on a lab node, in place of ours (a mixed cluster, issue 13).

Nothing of Kilo is here: the binary is the operator's (``$KPY_KILO_KG``, built by hand from
Kilo's source outside this repository); this module only says how a lab node runs it.

Kilo's ``kg`` keeps its private key in ``/var/lib/kilo/key`` and finds a wireguard-go device
through ``/var/run/wireguard/<iface>.sock``; both are the machine's paths, shared by every lab
node. So it runs in a mount namespace of its own where a tmpfs hides ``/var/lib`` (nothing is
written to the machine's) with the node's directory bound at ``/var/lib/kilo`` (the same key
file our kg uses: a node switched between the agents keeps its key), and the node's private
UAPI directory (the one our kg's wireguard-go serves) bound over ``/var/run/wireguard``. With
``--create-interface=false`` it drives the device that is there: the wireguard-go our kg
started, which stays when our kg stops, so a node switches agents without a new tunnel.
"""

from __future__ import annotations

import os

from kilo_lab.errors import LabError
from kilo_lab.lab import Lab
from kilo_lab.layout import kg_socket_dir

KILO_KG_ENV = "KPY_KILO_KG"  # path of Kilo 0.7's kg binary

_SCRIPT = (
    'mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && '
    "mount -t tmpfs kpy-kilo-lib /var/lib && mkdir /var/lib/kilo && "
    'mount --bind "$2" /var/lib/kilo && shift 2 && exec "$@"'
)


def binary() -> str | None:
    """Kilo's kg from the environment, if it names an executable file."""
    path = os.environ.get(KILO_KG_ENV, "")
    return path if path and os.access(path, os.X_OK) else None


def argv(lab: Lab, node: str, kg: str, extra: list[str] | None = None) -> list[str]:
    """How Kilo's ``kg`` runs on ``node`` with the flags our kg gets there (compat liveness)."""
    c = lab.spec.cluster(lab.spec.node(node).cluster)
    if c.liveness != "compat":
        raise LabError(f"Kilo's kg needs Kilo's liveness (last-seen); {c.name} is {c.liveness}")
    sockets = kg_socket_dir(lab.ns(node))
    if sockets is None:
        raise LabError(f"{node}: no namespace {lab.ns(node)}")
    os.makedirs(sockets, mode=0o700, exist_ok=True)
    return [
        "unshare", "--mount", "--", "sh", "-c", _SCRIPT, "sh",
        sockets, str(lab.node_dir(node)),
        kg,
        *lab.daemons.kilo_flags(node),
        "--create-interface=false",
        "--clean-up=false",
        *(extra or []),
    ]  # fmt: skip
