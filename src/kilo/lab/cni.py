"""Pods for the lab, made by the real CNI plugins the way a container runtime makes them.

The runtime's half of the CNI protocol (spec 0.4.0/1.0.0) for a plugin list: for ADD each plugin
of the list gets, on stdin, its own config plus the list's ``name`` and ``cniVersion`` and the
previous plugin's result as ``prevResult``; DEL runs the plugins in reverse order with the ADD
result as ``prevResult``. The environment carries ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME`` and ``CNI_PATH``.

Each plugin runs inside the NODE's network namespace (``ip netns exec``), as a kubelet on that
node would run it, and inside a private mount namespace in which the node's own directory is
bound over ``/var/lib/cni``: host-local keeps its leases there, and nodes must not share them.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import pathlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CNI_PATH = "/usr/lib/cni"
CNI_DATA = "/var/lib/cni"
PLUGINS_PACKAGE = "containernetworking-plugins"


class CNIError(RuntimeError):
    """A plugin failed; the message carries its CNI error (code, msg, details)."""


@dataclass(frozen=True)
class PodNetwork:
    """What ADD gave a pod: its address (with prefix length) and gateway."""

    ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    result: dict[str, Any]


def kilo_conflist(pod_cidr: str | None, mtu: int = 1420) -> dict[str, Any]:
    """The conflist Kilo's manifests install (``name: kilo``, bridge ``kube-bridge`` with
    host-local IPAM, portmap with SNAT); with ``pod_cidr`` the range kg would fill in."""
    ipam: dict[str, Any] = {"type": "host-local"}
    if pod_cidr is not None:
        ipam["ranges"] = [[{"subnet": pod_cidr}]]
    return {
        "cniVersion": "0.4.0",
        "name": "kilo",
        "plugins": [
            {
                "name": "kubernetes",
                "type": "bridge",
                "bridge": "kube-bridge",
                "isDefaultGateway": True,
                "forceAddress": True,
                "mtu": mtu,
                "ipam": ipam,
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def conflist_subnet(conf: Mapping[str, Any]) -> str | None:
    """The first IPAM range's subnet of a conflist (what kg writes for its node), if any."""
    for plugin in conf.get("plugins", []):
        ipam = plugin.get("ipam") or {}
        for rangeset in ipam.get("ranges") or []:
            for r in rangeset:
                if r.get("subnet"):
                    return str(r["subnet"])
        if ipam.get("subnet"):
            return str(ipam["subnet"])
    return None


def read_conflist(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A conflist file's content, or None if it is missing or not (yet) valid JSON."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("plugins"), list) else None


def plugins_available(cni_path: str = CNI_PATH) -> str | None:
    """None if the plugins the lab needs are installed, else what is missing."""
    missing = [
        p
        for p in ("bridge", "host-local", "portmap")
        if not os.access(os.path.join(cni_path, p), os.X_OK)
    ]
    if missing:
        return (
            f"CNI plugins missing in {cni_path}: {', '.join(missing)} "
            f"(apt-get install --no-install-recommends {PLUGINS_PACKAGE})"
        )
    return None


class Runtime:
    """Runs a conflist's plugins for pods of one node (namespace ``node_ns``)."""

    def __init__(
        self, node_ns: str, data_dir: str | os.PathLike[str], cni_path: str = CNI_PATH
    ) -> None:
        self.node_ns = node_ns
        self.data_dir = str(data_dir)
        self.cni_path = cni_path

    def add(
        self,
        conflist: Mapping[str, Any],
        container_id: str,
        pod_netns: str,
        ifname: str = "eth0",
        args: str = "",
    ) -> PodNetwork:
        """CNI ADD of every plugin in order; on failure the plugins already run are undone."""
        prev: dict[str, Any] | None = None
        done: list[Mapping[str, Any]] = []
        try:
            for plugin in conflist["plugins"]:
                prev = self._invoke(
                    "ADD", conflist, plugin, container_id, pod_netns, ifname, prev, args
                )
                done.append(plugin)
        except CNIError:
            partial = dict(conflist, plugins=done)
            self.delete(partial, container_id, pod_netns, ifname, prev, args, check=False)
            raise
        assert prev is not None
        return _pod_network(prev)

    def delete(
        self,
        conflist: Mapping[str, Any],
        container_id: str,
        pod_netns: str,
        ifname: str = "eth0",
        prev_result: Mapping[str, Any] | None = None,
        args: str = "",
        check: bool = True,
    ) -> list[str]:
        """CNI DEL of every plugin in reverse order; returns the errors (raises if ``check``)."""
        errors: list[str] = []
        for plugin in reversed(list(conflist["plugins"])):
            try:
                self._invoke(
                    "DEL",
                    conflist,
                    plugin,
                    container_id,
                    pod_netns,
                    ifname,
                    dict(prev_result) if prev_result else None,
                    args,
                )
            except CNIError as e:
                errors.append(str(e))
        if errors and check:
            raise CNIError("; ".join(errors))
        return errors

    def _invoke(
        self,
        command: str,
        conflist: Mapping[str, Any],
        plugin: Mapping[str, Any],
        container_id: str,
        pod_netns: str,
        ifname: str,
        prev: Mapping[str, Any] | None,
        args: str,
    ) -> dict[str, Any]:
        conf = copy.deepcopy(dict(plugin))
        conf["name"] = conflist["name"]
        conf["cniVersion"] = conflist.get("cniVersion", "0.4.0")
        if prev is not None:
            conf["prevResult"] = prev
        kind = str(conf.get("type", ""))
        binary = os.path.join(self.cni_path, kind)
        if not kind or "/" in kind or not os.access(binary, os.X_OK):
            raise CNIError(f"{command} {kind!r}: no such plugin in {self.cni_path}")
        netns_path = pod_netns if "/" in pod_netns else f"/var/run/netns/{pod_netns}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns_path,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.cni_path,
        }
        if args:
            env["CNI_ARGS"] = args
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(CNI_DATA, exist_ok=True)
        # ip netns exec gives the plugin a mount namespace of its own; the bind mount stays there.
        argv = [
            "ip",
            "netns",
            "exec",
            self.node_ns,
            "sh",
            "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"',
            "kpy-cni",
            self.data_dir,
            CNI_DATA,
            binary,
        ]
        proc = subprocess.run(
            argv, input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=60
        )
        out = proc.stdout.strip()
        if proc.returncode != 0:
            detail = out or proc.stderr.strip()
            try:
                err = json.loads(out)
                detail = f"code {err.get('code')}: {err.get('msg')} {err.get('details', '')}"
            except ValueError:
                pass
            raise CNIError(
                f"{command} {kind} for {container_id} on {self.node_ns}: {detail.strip()}"
            )
        if command != "ADD":
            return {}
        try:
            result = json.loads(out)
        except ValueError as e:
            raise CNIError(
                f"ADD {kind} for {container_id}: not a JSON result: {out[:200]!r}"
            ) from e
        if not isinstance(result, dict):
            raise CNIError(f"ADD {kind} for {container_id}: not a JSON object: {out[:200]!r}")
        return result


def _pod_network(result: Mapping[str, Any]) -> PodNetwork:
    for entry in result.get("ips", []):
        addr = ipaddress.ip_interface(entry["address"])
        if isinstance(addr, ipaddress.IPv4Interface):
            gw = entry.get("gateway")
            return PodNetwork(
                ip=addr, gateway=ipaddress.IPv4Address(gw) if gw else None, result=dict(result)
            )
    raise CNIError(f"the CNI result has no IPv4 address: {json.dumps(result)[:300]}")
