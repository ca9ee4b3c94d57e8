"""flanneld on a lab node, for clusters with ``flannel: true`` (kg ``--compatibility=flannel``).

Each node of such a cluster runs the pinned flanneld (``hack/binaries.sh flanneld``) in its own
namespace with the Kubernetes subnet manager (``--kube-subnet-mgr``): it reads the Node's
``spec.podCIDR``, publishes its ``flannel.alpha.coreos.com/*`` annotations, makes the VXLAN
device ``flannel.1`` and routes every other node's pod CIDR through it. Its network config and
subnet file are the node's own, under the lab's state directory (never the host's /run).

The pods keep the lab's CNI (Kilo's bridge + host-local conflist), with the range that
flanneld's ``subnet.env`` gives (``FLANNEL_SUBNET``, the Node's podCIDR), as flannel's own CNI
plugin would delegate it.

kg runs with the flags of ``manifests/kilo-kubeadm-flannel.yaml`` (``MANIFEST_ARGS``): flannel
compatibility, no CNI config of its own, no routes inside the location (flannel has them), and
kg's default ``--encapsulate=always`` that the manifest keeps. The manifests carry no flannel
net-conf.json (flannel is installed on its own); the lab's is flannel's default (VXLAN).
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import subprocess
from collections.abc import Mapping

from kilo_lab import procs
from kilo_lab.binaries import BinaryMissing, locate
from kilo_lab.errors import LabError
from kilo_lab.poll import wait_until
from kilo_lab.spec import ClusterSpec, NodeSpec

#: flannel's default backend (its kube-flannel.yml); VXLAN over UDP 8472, device flannel.1
BACKEND = "vxlan"
DEVICE = "flannel.1"
#: kg's flags in manifests/kilo-kubeadm-flannel.yaml beside those every lab node gets
MANIFEST_ARGS = ("--compatibility=flannel", "--cni=false", "--local=false")
#: and kg's default encapsulation, which the manifest keeps (the lab's others say never): in
#: flannel compatibility, routes to the location's nodes go through flannel.1
AGENT_ARGS = (*MANIFEST_ARGS, "--encapsulate=always")


def net_conf(c: ClusterSpec) -> dict[str, object]:
    """flannel's net-conf.json for cluster ``c``: its pod CIDR, the VXLAN backend."""
    return {"Network": str(c.pod_cidr), "Backend": {"Type": BACKEND}}


def flannel_dir(node_dir: pathlib.Path) -> pathlib.Path:
    return node_dir / "flannel"


def subnet_file(node_dir: pathlib.Path) -> pathlib.Path:
    return flannel_dir(node_dir) / "subnet.env"


def argv(n: NodeSpec, node_dir: pathlib.Path, kubeconfig: pathlib.Path) -> list[str]:
    """flanneld's command line on node ``n``."""
    try:
        binary = str(locate("flanneld"))
    except BinaryMissing as e:
        raise LabError(f"flannel on {n.name} needs flanneld: {e}") from e
    d = flannel_dir(node_dir)
    return [
        binary,
        "--kube-subnet-mgr",
        f"--kubeconfig-file={kubeconfig}",
        f"--net-config-path={d / 'net-conf.json'}",
        f"--subnet-file={subnet_file(node_dir)}",
        f"--iface={n.lan_ip}",
        "--ip-masq=false",
        "--healthz-port=0",
        "-v=1",
    ]


def start(
    n: NodeSpec, c: ClusterSpec, node_dir: pathlib.Path, kubeconfig: pathlib.Path, ns: str
) -> subprocess.Popen[bytes]:
    """Start flanneld on ``n`` inside namespace ``ns`` (logging to its flanneld.log)."""
    d = flannel_dir(node_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "net-conf.json").write_text(json.dumps(net_conf(c), indent=2) + "\n")
    subnet_file(node_dir).unlink(missing_ok=True)
    return procs.start(
        argv(n, node_dir, kubeconfig),
        netns_name=ns,
        log_file=node_dir / "flanneld.log",
        env={"NODE_NAME": n.name, "GOMAXPROCS": "1"},
        cwd=node_dir,
        banner=f"kpy-lab: starting flanneld on {n.name}",
    )


def read_subnet_env(path: pathlib.Path) -> dict[str, str]:
    """The KEY=VALUE lines of a subnet.env ({} if there is none yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait_subnet(
    n: NodeSpec, node_dir: pathlib.Path, proc: subprocess.Popen[bytes], timeout: float
) -> ipaddress.IPv4Network:
    """Wait for flanneld's subnet.env on ``n``; the node's pod subnet it names."""
    path = subnet_file(node_dir)
    log = node_dir / "flanneld.log"

    def written() -> bool:
        if "FLANNEL_SUBNET" in read_subnet_env(path):
            return True
        if proc.poll() is not None:
            raise LabError(
                f"flanneld on {n.name} exited with {proc.returncode}:\n{procs.tail(log)}"
            )
        return False

    wait_until(
        f"flanneld on {n.name} writing {path}",
        written,
        timeout,
        0.2,
        error=LabError,
        detail=lambda: "\n" + procs.tail(log),
    )
    return subnet_of(read_subnet_env(path))


def subnet_of(env: Mapping[str, str]) -> ipaddress.IPv4Network:
    """The pod subnet of a subnet.env (``FLANNEL_SUBNET`` is the node's first address in it)."""
    return ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network
