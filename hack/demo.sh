#!/usr/bin/env bash
# The demo: the talk's three acts on a lab of network namespaces (lab/demo.yaml: clusters c1 and
# c2 with real kube-apiservers, kg and wireguard-go on every node, CNI pods, kube-proxy; peers
# laptop and bare-metal-1). Run as root on a Linux machine:
#
#   bash hack/demo.sh [--keep] [--lab FILE] [--out DIR]
#
# It installs what is missing (hack/setup.sh: packages, the Python package, the pinned binaries,
# built once), then python3 -m kilo_lab.demo plays the acts, prints a summary table and tears the
# lab down (--keep leaves it up; `kilo-lab down demo` removes it). Exit code 0 iff every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[demo] %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { say "run me as root (the lab uses network namespaces)"; exit 1; }

# hack/setup.sh prints what it installs or builds; a first run builds the control plane from
# source (minutes), so show that it is alive meanwhile.
say "setting up (packages, Python package, control-plane binaries)"
start=$SECONDS
bash hack/setup.sh &
setup=$!
trap 'kill "$setup" 2>/dev/null; wait "$setup" 2>/dev/null; exit 130' INT TERM
while kill -0 "$setup" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$setup" 2>/dev/null || break; sleep 1; done
  kill -0 "$setup" 2>/dev/null && say "still setting up ($((SECONDS - start)) s)"
done
wait "$setup" || { say "setup failed"; exit 1; }
trap - INT TERM
say "setup done in $((SECONDS - start)) s"

eval "$(bash hack/binaries.sh --env)"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m kilo_lab.demo "$@"
