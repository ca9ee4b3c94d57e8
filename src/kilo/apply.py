"""Making the node match a plan, through the agent's ports, one part at a time: a part that
fails is reported and the others are still applied."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kilo.plan import Plan, Status
from kilo.ports import Files, Firewall, Host, RoutingTables, WireGuardDevice

log = logging.getLogger("kilo.agent")


@dataclass
class Applied:
    changes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "part: error"
    parts: list[str] = field(default_factory=list)  # the parts applied (in full or the change)

    @property
    def ok(self) -> bool:
        return not self.failures

    def run(self, part: str, step: Callable[[], list[str]]) -> None:
        self.parts.append(part)
        try:
            self.changes += step()
        except Exception as e:  # noqa: BLE001 - one part failing must not stop the others
            self.changes += getattr(e, "changes", None) or []  # what it did before failing
            self.failures.append(f"{part}: {e}")
            log.error("applying the %s failed: %s", part, e)


def apply_plan(
    plan: Plan,
    device: WireGuardDevice,
    routes: RoutingTables,
    firewall: Firewall,
    host: Host,
    files: Files,
    previous: Plan | None = None,
) -> Applied:
    """Apply what the plan holds: the CNI file and the IPIP device whenever the local node is
    known; the device, link, firewall and routes only when the whole data plane is planned
    (otherwise they stay as they are). With ``previous``, the plan last applied in full without
    a failure, a part equal to what it held is not applied again (nothing is read from or
    written to the kernel for it) and a part that differs is handed to its port with its
    previous value, so that only the difference is written (again without reading the kernel);
    without, every part is applied in full, which verifies it against the kernel and repairs
    it."""
    out = Applied()
    cni = plan.cni_conf
    if cni is not None:
        out.run("CNI configuration", lambda: files.write_cni(dict(cni)))
    node = plan.node
    if plan.ipip and node is not None:
        before = previous.node if previous is not None and previous.ipip else None
        if before is None or before.subnet != node.subnet:
            out.run("IPIP device", lambda: host.ensure_ipip(node.subnet))
    dp = plan.dataplane
    if plan.status is not Status.OK or dp is None:
        return out
    old = previous.dataplane if previous is not None else None
    if old is None:
        out.run("WireGuard configuration", lambda: device.apply(dp.wireguard))
    elif dp.wireguard != old.wireguard:
        out.run("WireGuard configuration", lambda: device.apply(dp.wireguard, old.wireguard))
    if old is None or (dp.addresses, dp.mtu) != (old.addresses, old.mtu):
        out.run("WireGuard link", lambda: device.configure_link(list(dp.addresses), dp.mtu))
    if old is None:
        out.run("firewall", lambda: firewall.apply(dp.ruleset))
    elif dp.ruleset != old.ruleset:
        out.run("firewall", lambda: firewall.apply(dp.ruleset, old.ruleset))
    if old is None:
        out.run("routes", lambda: routes.reconcile(dp.routes, dp.rules))
    elif (dp.routes, dp.rules) != (old.routes, old.rules):
        out.run("routes", lambda: routes.reconcile(dp.routes, dp.rules, (old.routes, old.rules)))
    return out
