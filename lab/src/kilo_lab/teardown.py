"""Removing every trace of a lab, from its state file (and its spec): from the process that
holds it, from another one, and after a crash."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

from kilo_lab import netns, pods, procs, state
from kilo_lab.layout import (
    KG_WG_SOCKET_ROOT,
    Paths,
    expected_namespaces,
    is_pod_namespace,
    kg_socket_dir,
    ns_name,
    pod_namespace_pattern,
    state_dir,
)
from kilo_lab.spec import LabSpec, parse

log = logging.getLogger(__name__)


def teardown(
    name: str,
    root: pathlib.Path | None = None,
    *,
    spec: LabSpec | None = None,
    data: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Remove every trace of lab ``name``: processes (by PID, and any still inside the lab's
    namespaces), pods (CNI DEL), namespaces, socket and state directories. ``data`` is the state
    (read from the state file if not given). Idempotent. Returns what it could not remove."""
    say = progress or (lambda msg: log.info("%s", msg))
    sdir = state_dir(name, root)
    data = data if data is not None else (state.load(name, root) or {})
    problems: list[str] = []
    if spec is None and data.get("spec"):
        with contextlib.suppress(Exception):
            spec = parse(data["spec"])
    # the processes we recorded: agents and kube-proxies first (SIGTERM, then wait)
    procs.stop([(p["pid"], p.get("start")) for p in data.get("processes", {}).values()])
    problems += _delete_pods(name, sdir, data)
    names = _namespaces(name, spec, data)
    wg_dirs = set(data.get("wg_dirs", []))
    wg_dirs.update(d for d in map(kg_socket_dir, names) if d is not None)
    # processes still inside our namespaces (wireguard-go started by kg, the control plane...):
    # pods first, control planes last
    for ns in sorted(names, key=lambda n: (not is_pod_namespace(n), n.endswith("-cp"))):
        killed = procs.stop_all_in(ns)
        if killed:
            log.debug("stopped %s in %s", killed, ns)
    for ns in names:
        netns.delete(ns)
    problems += [f"namespace {n} still exists" for n in names if netns.exists(n)]
    for d in [*data.get("dirs", []), *wg_dirs]:
        if os.path.basename(d).startswith(("kpy-", "net-")):
            shutil.rmtree(d, ignore_errors=True)
    for d in (KG_WG_SOCKET_ROOT, os.path.dirname(KG_WG_SOCKET_ROOT)):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only if empty: another agent may still use it
    if data.get("made_var_lib_cni"):
        with contextlib.suppress(OSError):
            os.rmdir(pods.CNI_DATA)
    shutil.rmtree(sdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(sdir.parent)
    if names or data:
        say(f"lab {name} is down" + (f" ({'; '.join(problems)})" if problems else ""))
    return problems


def _delete_pods(name: str, sdir: pathlib.Path, data: dict[str, Any]) -> list[str]:
    """CNI DEL of every recorded pod, while the node namespaces still exist."""
    problems: list[str] = []
    for pname, pod in data.get("pods", {}).items():
        node_ns = ns_name(name, pod["node"])
        if netns.exists(node_ns) and netns.exists(pod["netns"]):
            errors = pods.delete_quietly(
                node_ns,
                Paths(sdir).cni_data(pod["node"]),
                pod.get("conflist") or pods.node_conflist(None),
                pod["container_id"],
                pod["netns"],
                pod.get("result"),
            )
            problems += [f"pod {pname}: {e}" for e in errors]
    return problems


def _namespaces(name: str, spec: LabSpec | None, data: dict[str, Any]) -> list[str]:
    """Every namespace of the lab: recorded, derivable from the spec, or a pod by pattern."""
    names = list(
        dict.fromkeys([*data.get("namespaces", []), *(expected_namespaces(spec) if spec else [])])
    )
    nodes = set(data.get("nodes", {})) | ({n.name for n in spec.nodes} if spec else set())
    pattern = pod_namespace_pattern(name, nodes)
    names += [n for n in netns.names(f"kpy-{name}-") if pattern.match(n) and n not in names]
    return names
