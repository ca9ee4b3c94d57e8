"""The shape of the code, checked: the product never imports the lab, and the pure core imports
no adapter, no clock and nothing that reaches the kernel or the network."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "kilo"

#: Modules that compute and only compute (plain data in, plain data out).
CORE = {
    "model",
    "keys",
    "translate",
    "topology",
    "plan",
    "wireguard",
    "routes",
    "firewall",
    "graph",
    "mesh",
    "cni",
    "hostinfo",
    "cache",
    "wgstate",
    "claims",
    "prefixes",
    "status",
    "link",
}
#: What the core must not import: our adapters and loop, and anything with a clock or a socket.
NOT_IN_CORE = (
    "kilo.agent",
    "kilo.apply",
    "kilo.backend",
    "kilo.cli",
    "kilo.dataplane",
    "kilo.ports",
    "kilo.publisher",
    "kilo.server",
    "kubernetes",
    "pyroute2",
    "socket",
    "subprocess",
    "threading",
    "time",
    "urllib3",
)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts)


def test_the_product_never_imports_the_lab() -> None:
    bad = {
        module_name(p): sorted(m for m in imports(p) if m.split(".")[0] == "kilo_lab")
        for p in SRC.rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}
    assert not (SRC / "lab").exists()


def test_the_core_imports_no_adapter_and_no_clock() -> None:
    found = {}
    for name in CORE:
        mods = imports(SRC / f"{name}.py")
        bad = sorted(m for m in mods if any(m == x or m.startswith(x + ".") for x in NOT_IN_CORE))
        if bad:
            found[name] = bad
    assert found == {}
