#!/usr/bin/env bash
# Builds the container image ghcr.io/kilo-py/kilo:<version> on this machine, pulling no image:
#
#   bash hack/image.sh [OUTDIR]      (as root; OUTDIR defaults to build/image)
#
# writes OUTDIR/oci/ (an OCI image layout), OUTDIR/kilo-<version>.tar (`docker load -i` it; the
# same tar is also an OCI layout archive) and OUTDIR/digest (the manifest's digest), and prints
# `ref=`, `digest=`, `oci=`, `archive=` lines on stdout.
#
# Two layers: a Debian root filesystem made by mmdebstrap from Debian's packages (python3,
# iproute2, nftables, wireguard-tools, and the CNI plugins the install-cni init container copies
# to /opt/cni/bin), stripped of docs, man pages, locales and caches; then /usr/local: the
# project's wheel built from this checkout, its pinned dependencies (hack/image-requirements.txt)
# and the pinned wireguard-go of hack/binaries.sh. hack/oci_pack.py packs them reproducibly
# (sorted entries, mtimes clamped to SOURCE_DATE_EPOCH, default: the last commit's time), so
# two builds of one checkout give the same digest. The Containerfile makes the same image with
# Docker, Podman or Buildah.
#
# Cached outside the repository, like the binaries, keyed by what goes in:
#   ${KILO_CACHE:-/var/cache/kilo-py}/image/rootfs-<key>   the stripped Debian root filesystem
#   ${KILO_CACHE:-/var/cache/kilo-py}/image/wheels-<key>   the downloaded wheels
# KILO_IMAGE_MIRROR picks the Debian mirror (a snapshot mirror pins the packages too).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

log() { printf '[image] %3d s  %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and chroot)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (bash hack/setup.sh installs it)"

OUT=${1:-build/image}
CACHE=${KILO_CACHE:-/var/cache/kilo-py}/image
SUITE=bookworm
MIRROR=${KILO_IMAGE_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-python3}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
REPOSITORY=ghcr.io/kilo-py/kilo     # also manifests/helm/kilo/values.yaml (a test checks it)
REF=$REPOSITORY:$VERSION
PACKAGES=python3,iproute2,nftables,wireguard-tools,mount,containernetworking-plugins
CNI_PLUGINS=(bridge host-local loopback portmap)
PIP_PIN=pip==24.0
BUILD_PINS=(setuptools==75.3.0 wheel==0.44.0)
# Bump when the recipe of the root filesystem changes, so a cached one of the old recipe is redone.
ROOTFS_RECIPE=2
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# a local wheel directory of this machine's pip settings has no business in the image
unset PIP_FIND_LINKS PIP_NO_INDEX
[ -n "$VERSION" ] || die "no version in pyproject.toml"
start=$SECONDS

key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

tmp=$(mktemp -d /tmp/kpy-image.XXXXXX)
cleanup() {
  # the build root's mounts (if a step failed inside the chroot), then the temporary files
  for m in proc; do mountpoint -q "$tmp/root/$m" 2>/dev/null && umount -l "$tmp/root/$m"; done
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9

# 1. The Debian root filesystem, cached by its recipe.
rootfs_key=$(key_of "$SUITE" "$MIRROR" "$PACKAGES" "${CNI_PLUGINS[*]}" "$ROOTFS_RECIPE")
ROOTFS=$CACHE/rootfs-$rootfs_key
if [ ! -f "$ROOTFS/.complete" ]; then
  log "building the Debian root filesystem ($SUITE: $PACKAGES) into $ROOTFS"
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  excludes=()
  for p in /usr/share/man/ /usr/share/doc/ /usr/share/info/ /usr/share/locale/ /usr/share/lintian/ \
           /usr/share/linda/ /usr/share/bash-completion/ /usr/share/zsh/; do
    excludes+=(--dpkgopt="path-exclude=$p*")
  done
  # the merged-usr hook lays out /usr as bookworm expects without the usrmerge package (and perl)
  SOURCE_DATE_EPOCH=0 mmdebstrap --quiet --variant=essential --mode=root --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$PACKAGES" "${excludes[@]}" --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='mkdir -p "$1/opt/cni/bin"' \
    --customize-hook="for p in ${CNI_PLUGINS[*]}; do cp -p \"\$1/usr/lib/cni/\$p\" \"\$1/opt/cni/bin/\"; done" \
    --customize-hook='chroot "$1" dpkg --purge containernetworking-plugins iptables libip4tc2 libip6tc2 libnetfilter-conntrack3 libnfnetlink0' \
    "$SUITE" "$ROOTFS.tmp" "$MIRROR" >&2 || die "mmdebstrap failed"
  # what a container needs from the runtime, or never: devices, logs, caches, the apt state
  r=$ROOTFS.tmp
  rm -rf "$r"/dev/* "$r"/proc/* "$r"/sys/* "$r"/run/* "$r"/tmp/* "$r"/var/tmp/* \
         "$r"/var/log/* "$r"/var/cache/* "$r"/var/lib/apt/lists/* "$r"/var/cache/debconf/*-old \
         "$r"/var/lib/dpkg/*-old "$r"/etc/*- "$r"/etc/resolv.conf "$r"/etc/hostname \
         "$r"/etc/machine-id "$r"/usr/share/doc/*/changelog* "$r"/usr/lib/cni \
         "$r"/usr/lib/x86_64-linux-gnu/gconv     # iconv's modules: nothing here converts charsets
  find "$r" -depth -type d -empty -path "$r/usr/share/doc/*" -delete
  touch "$r/.complete"
  mv "$r" "$ROOTFS"
fi

# 2. The wheels: the pinned dependencies, pip to install them, setuptools to build ours.
wheels_key=$(key_of "$(cat hack/image-requirements.txt)" "$PIP_PIN" "${BUILD_PINS[*]}")
WHEELS=$CACHE/wheels-$wheels_key
if [ ! -f "$WHEELS/.complete" ]; then
  log "downloading the pinned wheels into $WHEELS"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS.tmp"
  # the image's Python is Debian's 3.11 on x86_64 glibc 2.36: name its tags, whatever runs this
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    $(for v in 2_36 2_34 2_28 2_17 2_5; do printf -- '--platform manylinux_%s_x86_64 ' "$v"; done) \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WHEELS.tmp" -r hack/image-requirements.txt "$PIP_PIN" "${BUILD_PINS[@]}" >&2 \
    || die "pip download failed"
  touch "$WHEELS.tmp/.complete"
  mv "$WHEELS.tmp" "$WHEELS"
fi
flock -u 9

# 3. The project's wheel, from a copy of this checkout's sources (no stale build/ to pick up).
log "building the kilo-py $VERSION wheel"
mkdir -p "$tmp/src" "$tmp/dist"
cp pyproject.toml "$tmp/src/"
cp -r src "$tmp/src/"
find "$tmp/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-index --find-links "$WHEELS" \
  -w "$tmp/dist" "$tmp/src" >&2 || die "building the wheel failed"
wheel=$(ls "$tmp/dist"/kilo_py-*.whl)

# 4. /usr/local: pip (run from its wheel by the image's own Python) installs the wheels.
log "installing kilo-py and its dependencies with the image's Python"
cp -a "$ROOTFS" "$tmp/root"
rm -f "$tmp/root/.complete"
mkdir -p "$tmp/root/tmp/kpy-wheels"
cp "$WHEELS"/*.whl "$wheel" hack/image-requirements.txt "$tmp/root/tmp/kpy-wheels/"
pipwhl=$(cd "$WHEELS" && ls pip-*.whl)
mount -t proc proc "$tmp/root/proc"
# nothing of this machine's environment (pip's settings, PYTHONPATH) reaches the image's Python
inroot() { chroot "$tmp/root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"; }
inroot /usr/bin/python3 "/tmp/kpy-wheels/$pipwhl/pip" install -q \
  --disable-pip-version-check --no-cache-dir --no-index --find-links /tmp/kpy-wheels \
  --no-compile --root-user-action=ignore --break-system-packages --no-warn-script-location \
  -r /tmp/kpy-wheels/image-requirements.txt "/tmp/kpy-wheels/$(basename "$wheel")" >&2 \
  || die "pip install in the image failed"
# the asyncio client (kubernetes.aio, half the package) is never imported: kilo uses the other
rm -rf "$tmp"/root/usr/local/lib/python3.11/dist-packages/kubernetes/aio
# byte-code whose validity is a hash of the source, not its mtime: the same bytes every build
inroot /usr/bin/python3 -m compileall -q -j 1 --invalidation-mode checked-hash \
  /usr/local/lib/python3.11 >&2 || die "compileall failed"
umount "$tmp/root/proc"
# pip's record of the (temporary) path it installed from
rm -f "$tmp"/root/usr/local/lib/python3.11/dist-packages/kilo_py-*.dist-info/direct_url.json
wg=$(KILO_IGNORE_PATH=1 bash hack/binaries.sh wireguard-go | sed -n 's/^wireguard-go=//p')
[ -x "$wg" ] || die "no wireguard-go from hack/binaries.sh"
install -m 0755 "$wg" "$tmp/root/usr/local/bin/wireguard-go"
[ -x "$tmp/root/usr/local/bin/kg" ] || die "pip installed no kg into /usr/local/bin"

# 5. Pack: the Debian layer, then /usr/local.
log "packing $REF (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
rm -rf "$OUT/oci" && mkdir -p "$OUT"
"$PY" hack/oci_pack.py \
  --layer "$ROOTFS" --exclude .complete \
  --layer "$tmp/root" --only usr/local \
  --ref "$REF" --epoch "$SOURCE_DATE_EPOCH" \
  --created-by "hack/image.sh: Debian $SUITE ($PACKAGES)" \
  --created-by "hack/image.sh: kilo-py $VERSION, its pinned dependencies, wireguard-go" \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.title=kilo-py" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --oci "$OUT/oci" --archive "$OUT/kilo-$VERSION.tar" > "$tmp/digest" || die "packing failed"
digest=$(cat "$tmp/digest")
printf '%s\n' "$digest" > "$OUT/digest"
log "built $REF $digest in $((SECONDS - start)) s ($(du -sh "$OUT/kilo-$VERSION.tar" | cut -f1) archive)"
printf 'ref=%s\ndigest=%s\noci=%s\narchive=%s\n' "$REF" "$digest" "$OUT/oci" "$OUT/kilo-$VERSION.tar"
