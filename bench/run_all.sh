#!/usr/bin/env bash
# Runs every benchmark in bench/ one after the other (as root) and prints their tables.
#   bash bench/run_all.sh            # about 20 minutes (scale.py alone 10); the lab benchmarks need hack/setup.sh
# Each lab benchmark brings up its own lab under a random name and always tears it down.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "$(id -u)" != 0 ]; then
  echo "run_all.sh: run as root (the lab benchmarks use network namespaces)" >&2
  exit 1
fi
failed=()
for b in plan peer_latency node_join failover throughput latency rotation agent_idle scale; do
  printf '\n=== bench/%s.py ===\n' "$b"
  start=$SECONDS
  if ! "$PY" "bench/$b.py"; then
    failed+=("$b")
  fi
  printf '(bench/%s.py took %d s)\n' "$b" "$((SECONDS - start))"
done
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nfailed: %s\n' "${failed[*]}" >&2
  exit 1
fi
