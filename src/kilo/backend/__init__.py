"""backend.

The ``kubernetes`` package and its ``kubernetes.config`` are imported without their package
``__init__`` (run later if a name only it defines is asked for: :mod:`kilo.lean_imports`): the
backends use the client's configuration and connection pool and the config loaders only, not
the dynamic client, watch, stream, informer or YAML utilities those ``__init__`` import, and
``kube_config`` (requests, oauthlib) is imported only for a kubeconfig file.
"""

from kilo.lean_imports import defer_package_init

defer_package_init("kubernetes")
defer_package_init("kubernetes.config")
