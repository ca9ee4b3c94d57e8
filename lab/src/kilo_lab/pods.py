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

from kilo.cni import default_conflist, with_pod_cidr

from kilo_lab import netns

CNI_PATH = "/usr/lib/cni"
CNI_DATA = "/var/lib/cni"
PLUGINS_PACKAGE = "containernetworking-plugins"


class CNIError(RuntimeError):
    """A plugin failed; the message carries its CNI error (code, msg, details)."""


@dataclass(frozen=True)
class PodNetwork:
    """What ADD gave a pod: its address (with prefix length; IPv4 if it has one) and gateway,
    and its IPv6 address if it has one (a dual-stack or IPv6 range)."""

    ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    result: dict[str, Any]
    ip6: ipaddress.IPv6Interface | None = None


@dataclass
class Pod:
    """A pod of the lab: a namespace on a node, networked by the node's conflist."""

    name: str  # <node>-p<i>
    node: str
    netns: str
    container_id: str
    ip: str  # address/prefix length (IPv4 if the pod has one)
    result: dict[str, Any]
    ip6: str | None = None  # its IPv6 address/prefix length, if any

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    @property
    def address6(self) -> str | None:
        return None if self.ip6 is None else self.ip6.split("/")[0]


def node_conflist(pod_cidr: str | None, *more: str) -> dict[str, Any]:
    """The conflist on a node: Kilo's default one (``kilo.cni.default_conflist``, what its
    manifests install and kg writes when there is none), with ``pod_cidr`` filled in as kg
    would (``kilo.cni.with_pod_cidr``) if given; ``more`` CIDRs (the other family of a
    dual-stack node) each become a range set of their own, as host-local takes dual stack."""
    conf = default_conflist()
    if pod_cidr is None:
        return conf
    conf = with_pod_cidr(conf, ipaddress.ip_interface(pod_cidr))
    for plugin in conf["plugins"]:
        if "ipam" in plugin:
            plugin["ipam"]["ranges"] += [[{"subnet": c}] for c in more]
    return conf


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
        argv = netns.command_with_mount(self.node_ns, self.data_dir, CNI_DATA, [binary])
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
    entries = [
        (ipaddress.ip_interface(e["address"]), e.get("gateway")) for e in result.get("ips", [])
    ]
    entries.sort(key=lambda e: e[0].version)  # IPv4 first: the pod's primary address
    if not entries:
        raise CNIError(f"the CNI result has no address: {json.dumps(result)[:300]}")
    addr, gw = entries[0]
    ip6 = next((a for a, _ in entries if isinstance(a, ipaddress.IPv6Interface)), None)
    return PodNetwork(
        ip=addr,
        gateway=ipaddress.ip_address(gw) if gw else None,
        result=dict(result),
        ip6=ip6,
    )


def delete_quietly(
    node_ns: str,
    data_dir: pathlib.Path,
    conflist: Mapping[str, Any],
    container_id: str,
    pod_ns: str,
    result: Mapping[str, Any] | None,
) -> list[str]:
    """CNI DEL of a pod, for teardown: the errors are returned, never raised."""
    runtime = Runtime(node_ns, data_dir)
    try:
        return runtime.delete(conflist, container_id, pod_ns, prev_result=result, check=False)
    except Exception as e:  # noqa: BLE001  (teardown goes on)
        return [str(e)]
