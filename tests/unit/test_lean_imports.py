"""kilo.lean_imports: kg loads the parts of ``kubernetes`` and ``pyroute2`` it uses, not their
package ``__init__`` (which import every submodule), and behaves as with the plain import:
kubeconfig from a file and in-cluster config load, names only an ``__init__`` defines are
still there (the ``__init__`` then runs), ``KILO_LEAN_IMPORTS=0`` and failures give the plain
import. The library checks run in a fresh interpreter each (``sys.modules`` is the subject)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo import lean_imports

ROOT = Path(__file__).resolve().parents[2]
KG = ROOT / "src" / "kilo" / "cli" / "kg.py"

#: What the packages' ``__init__`` import and kg does not use.
HEAVY = (
    "kubernetes.watch",
    "kubernetes.dynamic",
    "kubernetes.stream",
    "kubernetes.informer",
    "kubernetes.leaderelection",
    "websocket",
    "pyroute2.ndb",
    "pyroute2.ipdb",
    "pyroute2.conntrack",
    "pyroute2.ipset",
    "pyroute2.nftables",
    "sqlite3",
)

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://192.0.2.7:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: file-token}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


def kg_imports() -> list[str]:
    """The kilo modules kg's main module imports, at the top and inside its functions."""
    out = ["kilo.cli.kg"]
    for node in ast.walk(ast.parse(KG.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kilo"):
            out.append(node.module)
    return out


def run(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full.get("PYTHONPATH", "")])
    full.pop("KUBECONFIG", None)
    full.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


PROBE = """
import importlib, json, sys
for name in {mods!r}:
    importlib.import_module(name)
from kilo import lean_imports
from kilo.backend.apiserver import ApiHttp, api_client
http = ApiHttp(api_client({kubeconfig!r}))
headers = {{a["key"]: a["value"] for a in http.cfg.auth_settings().values()}}
print(json.dumps({{
    "host": http.host,
    "headers": headers,
    "pool": type(http.pool).__name__,
    "loaded": [m for m in {heavy!r} if m in sys.modules],
    "deferred": [p for p in ("kubernetes", "kubernetes.config", "pyroute2")
                 if lean_imports.deferred(p)],
}}))
"""


def test_kg_loads_no_heavy_module_and_reads_a_kubeconfig_file(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    got = run(PROBE.format(mods=kg_imports(), kubeconfig=str(kubeconfig), heavy=HEAVY))
    assert got["loaded"] == []
    assert got["deferred"] == ["kubernetes", "kubernetes.config", "pyroute2"]
    assert got["host"] == "https://192.0.2.7:6443"
    assert got["headers"] == {"authorization": "Bearer file-token"}
    assert got["pool"] == "PoolManager"


def test_in_cluster_config_without_the_kubeconfig_loader(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not used until a connection is made")
    code = f"""
        import json, sys
        from kilo.backend import apiserver
        from kubernetes.config import incluster_config
        incluster_config.SERVICE_TOKEN_FILENAME = {str(tmp_path / "token")!r}
        incluster_config.SERVICE_CERT_FILENAME = {str(tmp_path / "ca.crt")!r}
        http = apiserver.ApiHttp(apiserver.api_client())
        headers = {{a["key"]: a["value"] for a in http.cfg.auth_settings().values()}}
        print(json.dumps({{"host": http.host, "headers": headers,
                           "kube_config": "kubernetes.config.kube_config" in sys.modules,
                           "requests": "requests" in sys.modules}}))
    """
    env = {"KUBERNETES_SERVICE_HOST": "192.0.2.9", "KUBERNETES_SERVICE_PORT": "443"}
    got = run(code, env)
    assert got == {
        "host": "https://192.0.2.9:443",
        "headers": {"authorization": "bearer sa-token"},  # as the client writes it
        "kube_config": False,
        "requests": False,
    }


def test_not_in_cluster_falls_back_to_the_kubeconfig_loader(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    code = """
        import json
        from kilo.backend import apiserver
        print(json.dumps({"host": apiserver.ApiHttp(apiserver.api_client()).host}))
    """
    env = {"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
    assert run(code, env) == {"host": "https://192.0.2.7:6443"}


def test_names_only_the_init_defines_run_it() -> None:
    code = """
        import json, sys
        import kilo.backend.apiserver, kilo.dataplane.netlink
        from kilo import lean_imports
        import kubernetes, pyroute2
        from pyroute2.iproute import IPRoute
        before = [lean_imports.deferred(p) for p in ("kubernetes", "pyroute2")]
        version = kubernetes.__version__
        watch = kubernetes.watch.Watch.__name__
        from kubernetes import config
        load_config = config.load_config.__name__
        from pyroute2 import IPRoute as Plain, NDB
        print(json.dumps({
            "before": before, "version": version, "watch": watch, "load_config": load_config,
            "same": Plain is IPRoute, "ndb": NDB.__name__,
            "after": [lean_imports.deferred(p) for p in ("kubernetes", "pyroute2")],
            "has_getattr": hasattr(pyroute2, "__getattr__"),
        }))
    """
    got = run(code)
    assert got["before"] == [True, True]
    assert got["after"] == [False, False]
    assert isinstance(got["version"], str) and got["version"]
    assert got["watch"] == "Watch"
    assert got["load_config"] == "load_config"
    assert got["same"] is True
    assert got["ndb"] == "NDB"
    assert got["has_getattr"] is False


def test_switched_off_by_the_environment() -> None:
    code = f"""
        import json, sys
        import kilo.backend.apiserver, kilo.dataplane.netlink
        print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """
    got = run(code, {lean_imports.ENV: "0"})
    assert "kubernetes.watch" in got["loaded"]  # type: ignore[operator]
    assert "pyroute2.ndb" in got["loaded"]  # type: ignore[operator]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``leanpkg`` whose ``__init__`` counts its runs and imports ``heavy``."""
    pkg = tmp_path / "leanpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import builtins\n"
        "builtins.leanpkg_runs = getattr(builtins, 'leanpkg_runs', 0) + 1\n"
        "from . import heavy\n"
        "VALUE = 42\n"
    )
    (pkg / "heavy.py").write_text("")
    (pkg / "light.py").write_text("from leanpkg import VALUE\n")
    (pkg / "bad.py").write_text("raise RuntimeError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.leanpkg_runs", 0, raising=False)
    yield pkg
    for key in [k for k in sys.modules if k.split(".")[0] == "leanpkg"]:
        del sys.modules[key]


def test_deferred_then_run_once(package: Path) -> None:
    import builtins

    assert lean_imports.defer_package_init("leanpkg")
    assert not lean_imports.defer_package_init("leanpkg")  # already there: left alone
    import leanpkg  # type: ignore[import-not-found]

    assert "leanpkg.heavy" not in sys.modules
    assert builtins.leanpkg_runs == 0  # type: ignore[attr-defined]
    assert leanpkg.__path__ == [str(package)]
    import leanpkg.light  # type: ignore[import-not-found]  # needs VALUE: the __init__ runs

    assert builtins.leanpkg_runs == 1  # type: ignore[attr-defined]
    assert leanpkg.light.VALUE == 42
    assert "leanpkg.heavy" in sys.modules
    assert leanpkg.VALUE == 42
    with pytest.raises(AttributeError):
        _ = leanpkg.missing
    assert builtins.leanpkg_runs == 1  # type: ignore[attr-defined]
    assert not lean_imports.deferred("leanpkg")


def test_a_submodule_that_fails_undoes_it(package: Path) -> None:
    import builtins

    assert not lean_imports.defer_package_init("leanpkg", ("bad",))
    assert not [k for k in sys.modules if k.split(".")[0] == "leanpkg"]
    import leanpkg

    assert builtins.leanpkg_runs == 1  # type: ignore[attr-defined]
    assert leanpkg.VALUE == 42


def test_what_is_not_a_package_is_left_alone() -> None:
    assert not lean_imports.defer_package_init("json")  # already imported
    assert not lean_imports.defer_package_init("no_such_package_here")
    assert not lean_imports.defer_package_init("colorsys")  # a module, not a package
