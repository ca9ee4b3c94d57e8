#!/usr/bin/env bash
# Regenerates the static manifests kilo-<setup>.yaml from the Helm chart in helm/kilo, so the
# two never disagree (a test checks it). Usage: manifests/render.sh [OUTDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
helm=${KILO_BIN_HELM:-$("$here/../hack/binaries.sh" helm | sed -n 's/^helm=//p')}

# The chart carries its own copy of the CRD (Helm installs crds/ before the templates).
cp "$here/crds.yaml" "$here/helm/kilo/crds/crds.yaml"

# setup name -> chart values
setups=(
  "kubeadm                  platform=kubeadm,cni=kilo,wireguard=kernel"
  "kubeadm-flannel          platform=kubeadm,cni=flannel,wireguard=kernel"
  "kubeadm-userspace        platform=kubeadm,cni=kilo,wireguard=userspace"
  "kubeadm-flannel-userspace platform=kubeadm,cni=flannel,wireguard=userspace"
  "k3s                      platform=k3s,cni=kilo,wireguard=kernel"
  "k3s-flannel              platform=k3s,cni=flannel,wireguard=kernel"
  "k3s-userspace            platform=k3s,cni=kilo,wireguard=userspace"
)
for line in "${setups[@]}"; do
  read -r name values <<<"$line"
  {
    echo "# Kilo for $name, rendered from manifests/helm/kilo by manifests/render.sh; do not edit."
    echo "# Apply manifests/crds.yaml first."
    "$helm" template kilo "$here/helm/kilo" --namespace kube-system --set "$values"
  } > "$out/kilo-$name.yaml.tmp"
  mv "$out/kilo-$name.yaml.tmp" "$out/kilo-$name.yaml"
done
