#!/usr/bin/env bash
# The test suite: unit and property tests of the core, then integration tests against a real
# kube-apiserver + etcd, real wireguard-go and real network namespaces (tests/), and the lab's
# own tests (lab/tests). Run as root.
# Extra arguments go to pytest (e.g. `bash hack/test.sh tests/unit -x`); without them the
# guard-rails (hack/lint.sh) run first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
export PYTHONDONTWRITEBYTECODE=1
eval "$(bash hack/binaries.sh --env)"
if [ $# -eq 0 ]; then
  # The whole suite: the guard-rails first (ruff check, ruff format --check, mypy --strict).
  bash hack/lint.sh
  echo "[test] guard-rails passed"
  set -- tests lab/tests
fi
exec python3 -m pytest -q -p no:cacheprovider "$@"
