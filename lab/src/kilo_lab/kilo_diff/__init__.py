"""A randomized differential of ``kgctl``: seeded random clusters (``generate``), loaded into a
real API server and run through any kgctl binary (``run``), its outputs written as golden files
in the layout of ``tests/data`` (``golden``)."""
