"""Kilo in Python: a multi-cloud WireGuard network overlay for Kubernetes."""

__version__ = "0.1.0"
