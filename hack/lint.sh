#!/usr/bin/env bash
# The guard-rails: ruff (lint and format) over the whole tree, mypy --strict over the packages.
#   hack/lint.sh          all three
#   hack/lint.sh mypy     only mypy (the pre-commit hook)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" != mypy ]; then
  "$PY" -m ruff check .
  "$PY" -m ruff format --check .
fi
"$PY" -m mypy
