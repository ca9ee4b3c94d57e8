#!/usr/bin/env bash
# Provides the third-party binaries the tests, the demo and CI need, and prints where they are.
#
#   hack/binaries.sh [NAME ...]     NAME: kube-apiserver etcd kubectl kube-proxy
#                                   kube-controller-manager helm wireguard-go flanneld
#                                   (default: all); prints NAME=PATH lines on stdout
#   hack/binaries.sh --env          prints `export KILO_BIN_<NAME>=PATH` lines for eval
#
# No registry ships these as binaries, so they are built from their pinned Go modules with the
# local Go toolchain and cached outside the repository, keyed by version:
#   ${KILO_CACHE:-/var/cache/kilo-py}/bin/<version>/<name>
# A binary the user already has is used first: in $KUBEBUILDER_ASSETS, then on PATH (its version
# is not checked; set KILO_IGNORE_PATH=1 to always use the pinned build).
set -euo pipefail

K8S_VERSION=v1.34.4          # k8s.io/kubernetes; staging modules k8s.io/* at v0.34.4
HELM_VERSION=v3.19.0         # helm.sh/helm/v3
WG_VERSION=v0.0.0-20250521234502-f333402bd9cb   # golang.zx2c4.com/wireguard (May 2025 snapshot)
FLANNEL_VERSION=v0.28.11     # github.com/flannel-io/flannel (flanneld, for --compatibility=flannel)
# Bump a recipe number when the build flags change, so cached binaries of the old recipe are redone
# (r2: the real version stamped in with -X, which kubectl and helm need to parse versions).
K8S_RECIPE=2
HELM_RECIPE=2
CACHE=${KILO_CACHE:-/var/cache/kilo-py}
ALL=(kube-apiserver etcd kubectl kube-proxy kube-controller-manager helm wireguard-go flanneld)

log() { printf '[binaries] %s\n' "$*" >&2; }
die() { printf '[binaries] error: %s\n' "$*" >&2; exit 1; }

version_of() {
  case "$1" in
    kube-apiserver|kubectl|kube-proxy|kube-controller-manager) echo "k8s-$K8S_VERSION-r$K8S_RECIPE" ;;
    etcd) echo "k8s-$K8S_VERSION" ;;
    helm) echo "helm-$HELM_VERSION-r$HELM_RECIPE" ;;
    wireguard-go) echo "wg-$WG_VERSION" ;;
    flanneld) echo "flannel-$FLANNEL_VERSION" ;;
    *) die "unknown binary '$1' (known: ${ALL[*]})" ;;
  esac
}

need_go() {
  command -v go >/dev/null 2>&1 || die "the Go toolchain is needed to build $1 (no 'go' on PATH)"
}

# build_in DIR OUT PKG...: go build each PKG in the build module DIR into OUT/<basename>
build_module_k8s() {
  local dir=$1
  mkdir -p "$dir"
  if [ ! -f "$dir/go.mod" ]; then
    log "preparing build module for k8s.io/kubernetes $K8S_VERSION"
    local staging=${K8S_VERSION/v1./v0.}
    (cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null) \
      || die "cannot download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module kilo-py.local/k8s-build"
      echo
      echo "go 1.24.0"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > "$dir/go.mod.tmp"
    mv "$dir/go.mod.tmp" "$dir/go.mod"
  fi
}

# -X flags that stamp the release into the binaries, as Kubernetes' own build does; without them
# they report v0.0.0-master+$Format:%H$, which kubectl cannot parse.
k8s_version_flags() {
  local minor=${K8S_VERSION#v1.} p f=""
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}

# helm's release, and the Kubernetes version `helm template` assumes (that of its client-go).
helm_version_flags() {
  local cg major minor p
  cg=$(cd "$1" && go list -f '{{.Version}}' -m k8s.io/client-go) || die "cannot read helm's client-go version"
  cg=${cg#v}; major=$(( ${cg%%.*} + 1 )); minor=${cg#*.}; minor=${minor%%.*}
  local f="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    f+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  echo "$f"
}

build() {
  local name=$1 out=$2
  need_go "$name"
  local work="$CACHE/build" start=$SECONDS
  mkdir -p "$work" "$(dirname "$out")"
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  case "$name" in
    kube-apiserver|kubectl|kube-proxy|kube-controller-manager|etcd)
      build_module_k8s "$work/k8s-$K8S_VERSION"
      local pkg
      case "$name" in
        etcd) pkg=go.etcd.io/etcd/server/v3 ;;
        *) pkg=k8s.io/kubernetes/cmd/$name ;;
      esac
      log "building $name ($pkg, via k8s.io/kubernetes $K8S_VERSION); this takes minutes"
      local flags
      flags="-s -w $(k8s_version_flags)"
      (cd "$work/k8s-$K8S_VERSION" && go build -trimpath -ldflags="$flags" -o "$out.tmp" "$pkg") \
        || die "go build of $pkg failed"
      ;;
    helm)
      local d="$work/helm-$HELM_VERSION"; mkdir -p "$d"
      [ -f "$d/go.mod" ] || printf 'module kilo-py.local/helm-build\n\ngo 1.24.0\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" > "$d/go.mod"
      log "building helm (helm.sh/helm/v3 $HELM_VERSION)"
      local flags
      flags="-s -w $(helm_version_flags "$d")" || die "cannot work out helm's version flags"
      (cd "$d" && go build -trimpath -ldflags="$flags" -o "$out.tmp" helm.sh/helm/v3/cmd/helm) \
        || die "go build of helm failed"
      ;;
    wireguard-go)
      local d="$work/wg-$WG_VERSION"; mkdir -p "$d"
      [ -f "$d/go.mod" ] || printf 'module kilo-py.local/wg-build\n\ngo 1.23\n\nrequire golang.zx2c4.com/wireguard %s\n' "$WG_VERSION" > "$d/go.mod"
      log "building wireguard-go (golang.zx2c4.com/wireguard $WG_VERSION)"
      (cd "$d" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" golang.zx2c4.com/wireguard) || die "go build of wireguard-go failed"
      ;;
    flanneld)
      # flanneld's main package, less its Tencent VPC backend: that backend's SDK module
      # (github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc) is not served by the Go
      # module proxy, so the import is dropped from a copy of the module in the cache. cgo on, as
      # flannel builds it (its udp backend is C).
      local d="$work/flannel-$FLANNEL_VERSION" src
      if [ ! -f "$d/.prepared" ]; then
        src=$(cd /tmp && go mod download -json "github.com/flannel-io/flannel@$FLANNEL_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
        [ -n "$src" ] || die "cannot download github.com/flannel-io/flannel@$FLANNEL_VERSION"
        rm -rf "$d"; cp -r "$src" "$d"; chmod -R u+w "$d"
        sed -i '/flannel\/pkg\/backend\/tencentvpc"/d' "$d/main.go"
        (cd "$d" && go mod edit -droprequire=github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc)
        touch "$d/.prepared"
      fi
      log "building flanneld (github.com/flannel-io/flannel $FLANNEL_VERSION); this takes minutes"
      local flags="-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION"
      (cd "$d" && CGO_ENABLED=1 go build -trimpath -ldflags="$flags" -o "$out.tmp" .) \
        || die "go build of flanneld failed"
      ;;
  esac
  mv "$out.tmp" "$out"
  log "built $name in $((SECONDS - start)) s: $out"
}

# usable_from_path NAME PATH: whether a binary found on PATH will do. Kubernetes 1.31+ needs
# etcd >= 3.5.11 for its health checks (Debian's etcd-server is 3.4), so an older etcd is passed by.
usable_from_path() {
  case "$1" in
    etcd)
      local v
      v=$("$2" --version 2>/dev/null | sed -n 's/^etcd Version: \([0-9.]*\).*/\1/p')
      if [ -z "$v" ] || [ "$(printf '%s\n3.5.11\n' "$v" | sort -V | head -n1)" != 3.5.11 ]; then
        log "ignoring $2 (etcd ${v:-of unknown version}; kube-apiserver needs >= 3.5.11)"
        return 1
      fi ;;
  esac
  return 0
}

locate() {
  local name=$1 cached
  cached="$CACHE/bin/$(version_of "$name")/$name"
  if [ -x "$cached" ]; then echo "$cached"; return; fi
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then
    echo "$KUBEBUILDER_ASSETS/$name"; return
  fi
  if [ "${KILO_IGNORE_PATH:-0}" != 1 ] && [ "$name" != kubectl ] && command -v "$name" >/dev/null 2>&1 \
     && usable_from_path "$name" "$(command -v "$name")"; then
    command -v "$name"; return
  fi
  mkdir -p "$CACHE"
  # One build at a time per cache, so parallel callers wait instead of racing.
  exec 9>"$CACHE/.build.lock"
  flock 9
  [ -x "$cached" ] || build "$name" "$cached"
  flock -u 9
  echo "$cached"
}

mode=plain
names=()
for a in "$@"; do
  case "$a" in
    --env) mode=env ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) names+=("$a") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
for n in "${names[@]}"; do
  p=$(locate "$n")
  [ -x "$p" ] || die "$n is missing after the build: $p"
  if [ "$mode" = env ]; then
    v=${n^^}; v=${v//-/_}
    echo "export KILO_BIN_$v=$p"
  else
    echo "$n=$p"
  fi
done
