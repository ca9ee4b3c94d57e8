"""A library's package ``__init__`` run only when something needs it.

``kubernetes`` and ``pyroute2`` import every one of their submodules from their package
``__init__``: ``import kubernetes.client`` first runs ``kubernetes/__init__.py``, which imports
the dynamic client, watch, stream (websocket-client), informer, leader election and the YAML
utilities; ``from pyroute2.iproute import IPRoute`` first runs ``pyroute2/__init__.py``, which
imports every netlink protocol, IPDB and NDB (with sqlite3). ``kg`` uses none of those: 5.6 MB
of its resident memory at 1,000 nodes, 7 MB at import (``bench/README.md``, the scale section).

:func:`defer_package_init` registers such a package in ``sys.modules`` with its ``__init__``
not yet run, so that importing one of its submodules imports that submodule (and what it
imports) only. Nothing else changes: the package's first attribute that is not one of its
submodules (a name its ``__init__`` defines: ``kubernetes.__version__``,
``from pyroute2 import NDB``, ``import kubernetes; kubernetes.watch``) runs the real
``__init__`` there and then, in the package's own namespace, and the attribute is what the
plain import would have given. That is the fallback for whatever a later version of the library
moves into its ``__init__``. The package is left to the plain import when it is already
imported, when it is not an ordinary package on the path (not installed, a namespace package,
a loader that cannot run it later), when one of the given submodules does not import this way,
and when ``KILO_LEAN_IMPORTS=0`` is set in the environment.

Called from ``kilo.backend`` and ``kilo.dataplane``'s own ``__init__``, so before any of their
modules imports the library (``tests/unit/test_lean_imports.py`` proves what ``kg`` then
loads and does not).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from importlib.abc import Loader
from types import ModuleType
from typing import Any

#: ``KILO_LEAN_IMPORTS=0``: every package is imported as usual.
ENV = "KILO_LEAN_IMPORTS"

_lock = threading.RLock()


class _Deferred:
    """The package's ``__getattr__`` (PEP 562) until its ``__init__`` has run."""

    def __init__(self, module: ModuleType, loader: Loader) -> None:
        self.module = module
        self.loader = loader
        self.running = False

    def __call__(self, attr: str) -> Any:
        name = self.module.__name__
        if not attr.startswith("__"):
            try:  # a submodule: what the package's __init__ would have imported
                return importlib.import_module(f"{name}.{attr}")
            except ModuleNotFoundError as e:
                if e.name != f"{name}.{attr}":
                    raise
        with _lock:
            if self.module.__dict__.get("__getattr__") is self and not self.running:
                self.running = True
                try:
                    self.loader.exec_module(self.module)  # the plain import, late
                finally:
                    self.running = False
                if self.module.__dict__.get("__getattr__") is self:
                    del self.module.__dict__["__getattr__"]
        try:
            return self.module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None


def defer_package_init(name: str, submodules: Sequence[str] = ()) -> bool:
    """Register the package ``name`` (``"kubernetes"``, ``"kubernetes.config"``: its parent
    first) with its ``__init__`` deferred until a name it defines is asked for, then import
    ``submodules`` (relative names: ``"config.log"``), those whose import has an effect the
    package's ``__init__`` relied on. True when deferred; False when left to the plain import
    (see the module's description), in which case nothing was changed."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    with _lock:
        if name in sys.modules:
            return False
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return False
        if (
            spec is None
            or spec.submodule_search_locations is None
            or spec.origin is None
            or not spec.has_location
            or spec.loader is None
            or not hasattr(spec.loader, "exec_module")
        ):
            return False
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__getattr__"] = _Deferred(module, spec.loader)
        parent, _, child = name.rpartition(".")
        sys.modules[name] = module
        if parent:
            setattr(sys.modules[parent], child, module)
        try:
            for sub in submodules:
                importlib.import_module(f"{name}.{sub}")
        except Exception:  # noqa: BLE001 - any failure: undo, the plain import then runs
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            if parent and getattr(sys.modules.get(parent), child, None) is module:
                delattr(sys.modules[parent], child)
            return False
        return True


def deferred(name: str) -> bool:
    """Whether the package ``name`` is imported with its ``__init__`` not (yet) run."""
    module = sys.modules.get(name)
    return module is not None and isinstance(module.__dict__.get("__getattr__"), _Deferred)
