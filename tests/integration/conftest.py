"""Fixtures for tests against a real kube-apiserver + etcd and labs of network namespaces; they
and the helpers (need_lab, need_binaries, ...) come from the lab's ``kilo_lab.testing``."""

from kilo_lab.testing import (  # noqa: F401  (fixtures and helpers offered to the tests)
    CRDS,
    MANIFESTS,
    REPO,
    control_plane,
    crd_installer,
    helm,
    install_crd,
    need_binaries,
    need_lab,
    need_root,
    require,
    unavailable,
)
