"""Fixtures of the lab's own tests (shared with the product's integration tests through
``kilo_lab.testing``)."""

from kilo_lab.testing import control_plane, require  # noqa: F401  (fixtures)
