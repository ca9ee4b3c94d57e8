"""``Story``: the talk's acts on a running lab (the acts themselves are in ``acts``).

``say`` prints each line (``print`` by default). The first cluster plays the acts; the second
(if any) is the "other" cluster of act 3. Peers: ``laptop`` and ``bare-metal-1`` by name, else
the lab's first and second peer. Each act goes on after a failed check (the later ones then
usually fail too) and records what it saw; ``close()`` stops what the story started. The
end-to-end tests play exactly this story on labs of every granularity.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
from collections.abc import Callable

from kilo_lab import acts, procs
from kilo_lab.binaries import locate
from kilo_lab.commands import KGCTL
from kilo_lab.console import Check, Checks, Console, summary_table
from kilo_lab.lab import Lab
from kilo_lab.observe import pods_of
from kilo_lab.peers import PeerHost, stop_device
from kilo_lab.pods import Pod
from kilo_lab.spec import ClusterSpec


class Story:
    """The talk's acts on a running lab; every check is recorded in ``checks``."""

    def __init__(
        self,
        lab: Lab,
        *,
        say: Callable[[str], None] | None = None,
        color: bool = False,
        timeout: float = 45.0,
        checks: list[Check] | None = None,
    ) -> None:
        self.lab = lab
        self.console = Console(say, color)
        self.record = Checks(self.console, checks)
        self.timeout = timeout
        self.servers: list[subprocess.Popen[bytes]] = []
        self.peer_hosts: dict[str, PeerHost] = {}
        self.work = lab.dir / "demo"
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._bin = self.work / "bin"
        self._bin.mkdir(exist_ok=True)
        kgctl = self._bin / "kgctl"
        kgctl.write_text(f'#!/bin/sh\nexec {shlex.join(KGCTL)} "$@"\n')
        kgctl.chmod(0o755)

    # ---- the acts

    def act1(self) -> None:
        acts.act1(self)

    def act2(self) -> None:
        acts.act2(self)

    def act3(self) -> None:
        acts.act3(self)

    def graphs(self, out_dir: pathlib.Path) -> list[pathlib.Path]:
        return acts.graphs(self, out_dir)

    # ---- roles

    @property
    def c1(self) -> ClusterSpec:
        return self.lab.spec.clusters[0]

    @property
    def c2(self) -> ClusterSpec | None:
        return self.lab.spec.clusters[1] if len(self.lab.spec.clusters) > 1 else None

    def peer_name(self, preferred: str, exclude: str | None = None) -> str | None:
        """The lab peer ``preferred``, else the first other one (not ``exclude``)."""
        names = [p.name for p in self.lab.spec.peers]
        if preferred in names:
            return preferred
        rest = [n for n in names if n != exclude and n not in ("laptop", "bare-metal-1")]
        return rest[0] if rest else None

    def pod_far(self, cluster: ClusterSpec) -> Pod:
        """A pod on the last node of the cluster's last location (the "far" end)."""
        return pods_of(self.lab, cluster, cluster.locations[-1].name)[-1]

    def pod_near(self, cluster: ClusterSpec) -> Pod:
        """A pod on the last node of the cluster's first location."""
        return pods_of(self.lab, cluster, cluster.locations[0].name)[-1]

    # ---- checks (recorded in ``checks``)

    @property
    def checks(self) -> list[Check]:
        return self.record.record

    def check(self, act: str, name: str, fn: Callable[[], str | None]) -> bool:
        return self.record.check(act, name, fn)

    def failed(self, act: str | None = None) -> list[Check]:
        return self.record.failed(act)

    def of(self, act: str) -> list[Check]:
        return self.record.of(act)

    def summary(self) -> str:
        return summary_table(self.checks)

    # ---- running things

    def env(self) -> dict[str, str]:
        """The admin shell's environment: KUBECONFIG1/2, SERVICECIDR1/2 (as in the talk),
        KUBECONFIG_<CLUSTER>, KUBECONFIG (the first cluster), kubectl and kgctl on PATH."""
        env = {
            "PATH": f"{self._bin}:{locate('kubectl').parent}:"
            f"{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "KUBECONFIG": str(self.lab.kubeconfig(self.c1.name)),
        }
        for k, c in enumerate(self.lab.spec.clusters, start=1):
            kc = str(self.lab.kubeconfig(c.name))
            env[f"KUBECONFIG{k}"] = kc
            env[f"SERVICECIDR{k}"] = str(c.service_cidr)
            env[f"KUBECONFIG_{c.name.upper().replace('-', '_')}"] = kc
        return env

    def sh(
        self,
        host: str,
        script: str,
        *,
        show: bool = True,
        input: str | None = None,
        shown: str | None = None,
        timeout: float = 120,
        limit: int = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``sh -c`` in ``host``'s namespace, printing it and its output."""
        if show:
            self.console.command(host, shown if shown is not None else script)
        # stderr into stdout, so that the output reads in the order it was printed
        proc = self.lab.exec(
            host, ["sh", "-c", f"exec 2>&1\n{script}"], input=input, env=self.env(), timeout=timeout
        )
        if show:
            self.console.output(proc.stdout, limit)
        return proc

    def start_server(self, host: str, ip: str, port: int) -> None:
        """A tiny HTTP server (``kilo_lab.httpd``) on ``ip:port`` in ``host``, in the
        background; it answers when this returns."""
        self.console.command(host, f"python3 -m kilo_lab.httpd {port} --bind {ip} &")
        self.servers.append(self.lab.start_server(host, ip, port, f"hello from {host} ({ip})"))

    def close(self) -> None:
        """Stop what the story started (HTTP servers, the peers' wireguard-go)."""
        procs.stop(self.servers, timeout=5)
        self.servers.clear()
        for ph in self.peer_hosts.values():
            stop_device(self.lab, ph)
