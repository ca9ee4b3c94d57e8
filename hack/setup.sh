#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (as root), idempotently:
# system packages, the Python packages (kilo-py with its test extras, and the lab, kilo-lab, from
# ./lab) installed editable from this checkout, and the pinned third-party binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

PKGS=(iproute2 nftables iptables conntrack wireguard-tools containernetworking-plugins graphviz iputils-ping curl procps util-linux iperf3
      mmdebstrap)   # mmdebstrap: the container image's root filesystem (hack/image.sh)
PKGS+=(gcc libc6-dev)   # cgo for flanneld (hack/binaries.sh: its udp backend is C)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# both packages must come from this checkout (another checkout's editable install does not do)
from_here() {
  "$PY" -c 'import sys, importlib; m = importlib.import_module(sys.argv[1]); sys.exit(0 if m.__file__.startswith(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null
}
if ! "$PY" -c 'import kilo, kilo_lab, hypothesis, pytest, kubernetes, pyroute2, yaml, prometheus_client, ruff, mypy' 2>/dev/null \
   || ! from_here kilo "$PWD/src/" || ! from_here kilo_lab "$PWD/lab/src/"; then
  log "installing kilo-py (with its test extras) and kilo-lab, editable from $PWD"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' -e ./lab
fi

log "providing the control-plane and WireGuard binaries (built once, then cached)"
bash hack/binaries.sh >&2
