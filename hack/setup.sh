#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (as root), idempotently:
# system packages, the Python package with its test extras, and the pinned third-party binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

PKGS=(iproute2 nftables iptables wireguard-tools containernetworking-plugins graphviz iputils-ping curl procps util-linux iperf3)
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
if ! "$PY" -c 'import kilo, hypothesis, pytest, kubernetes, pyroute2' 2>/dev/null \
   || ! "$PY" -c 'import kilo, sys; sys.exit(0 if kilo.__file__.startswith("'"$PWD"'") else 1)' 2>/dev/null; then
  log "installing the kilo-py package (editable) with its test extras"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
fi

log "providing the control-plane and WireGuard binaries (built once, then cached)"
bash hack/binaries.sh >&2
