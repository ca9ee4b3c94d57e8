"""dataplane.

``pyroute2`` is imported without its package ``__init__``, which imports every netlink protocol,
IPDB and NDB (run later if a name only it defines is asked for: :mod:`kilo.lean_imports`): the
modules here import ``IPRoute``, ``WireGuard`` and the netlink errors from their submodules.
``pyroute2.config.log`` is imported as the ``__init__`` does (the ``pyroute2`` logger's
NullHandler).
"""

from kilo.lean_imports import defer_package_init

defer_package_init("pyroute2", ("config.log",))
