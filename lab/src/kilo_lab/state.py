"""A lab's state file, ``<state dir>/state.json``: what exists, so that a lab can be looked at
and torn down from another process and after a crash.

``Store`` writes it (atomically, after every change); ``load``, ``list_labs`` and ``status``
read it. Keys: ``name``, ``phase`` (starting, ready, stopping), ``agent``, ``spec`` (the raw
description), ``owner`` (pid and start time of the process holding the lab), ``namespaces``,
``processes`` (key -> pid, start time, host), ``dirs`` and ``wg_dirs`` (to remove),
``made_var_lib_cni``, ``clusters``, ``nodes``, ``peers``, ``pods``.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from kilo_lab import netns, procs
from kilo_lab.layout import STATE_ROOT, state_dir


class Store:
    """The state of one lab, kept in memory and on disk."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.data: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.data)

    def create(self, name: str, agent: bool, spec: Mapping[str, Any] | None) -> None:
        """A new state directory (it must not exist) and file."""
        self.dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        self.data = {
            "name": name,
            "phase": "starting",
            "agent": agent,
            "spec": dict(spec) if spec is not None else None,
            "owner": {"pid": os.getpid(), "start": procs.start_time(os.getpid())},
            "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "namespaces": [],
            "processes": {},
            "dirs": [],
            "wg_dirs": [],
            "made_var_lib_cni": False,
            "clusters": {},
            "nodes": {},
            "peers": {},
            "nats": {},
            "pods": {},
        }
        self.save()

    def save(self) -> None:
        if not self.data:
            return
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.dir / "state.json")

    def clear(self) -> None:
        self.data = {}

    def set_phase(self, phase: str) -> None:
        if self.data:
            self.data["phase"] = phase
            self.save()

    def add_namespace(self, name: str) -> None:
        self.data["namespaces"].append(name)
        self.save()

    def remove_namespace(self, name: str) -> None:
        self.data["namespaces"] = [n for n in self.data["namespaces"] if n != name]
        self.save()

    def add_process(self, key: str, pid: int, host: str) -> None:
        self.data["processes"][key] = {"pid": pid, "start": procs.start_time(pid), "host": host}
        self.save()

    def remove_process(self, key: str) -> None:
        if self.data and self.data["processes"].pop(key, None) is not None:
            self.save()

    def add(self, section: str, key: str, value: Any) -> None:
        """``data[section][key] = value`` (section: clusters, nodes, peers, nats, pods)."""
        self.data[section][key] = value
        self.save()

    def remove(self, section: str, key: str) -> Any:
        value = self.data[section].pop(key, None)
        self.save()
        return value

    def append(self, section: str, value: str) -> None:
        """Add to a list: ``dirs`` or ``wg_dirs``."""
        self.data[section].append(value)
        self.save()


def load(name: str, root: pathlib.Path | None = None) -> dict[str, Any] | None:
    """A lab's state as written, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads((state_dir(name, root) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_labs(root: pathlib.Path | None = None) -> list[str]:
    """The labs that have a state file."""
    base = root or STATE_ROOT
    try:
        return sorted(p.name for p in base.iterdir() if (p / "state.json").exists())
    except FileNotFoundError:
        return []


def status(name: str, root: pathlib.Path | None = None) -> dict[str, Any] | None:
    """What a lab has and whether its processes run (from its state file and the kernel);
    None if there is no such lab."""
    state = load(name, root)
    if state is None:
        return None
    owner = state.get("owner", {})
    processes = {
        k: {**p, "alive": procs.alive(p["pid"], p.get("start"))}
        for k, p in state.get("processes", {}).items()
    }
    return {
        "name": name,
        "phase": state.get("phase"),
        "owner": {**owner, "alive": bool(owner) and procs.alive(owner["pid"], owner.get("start"))},
        "clusters": state.get("clusters", {}),
        "nodes": state.get("nodes", {}),
        "peers": state.get("peers", {}),
        "nats": state.get("nats", {}),
        "pods": {
            k: {"node": v["node"], "ip": v["ip"], "netns": v["netns"]}
            for k, v in state.get("pods", {}).items()
        },
        "processes": processes,
        "namespaces": {n: netns.exists(n) for n in state.get("namespaces", [])},
    }
