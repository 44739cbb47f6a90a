#!/usr/bin/env bash
# Builds the sandbox's base image without any image registry: debootstrap a Debian bookworm
# root file system from a Debian mirror, install the sandbox's system packages into it with apt,
# then `docker import` it.
#
# Why: Dockerfile.sandbox.basic normally starts FROM python:3.11-slim-bookworm, which needs a
# registry. On machines that reach a Debian mirror but no image registry, this image stands in
# for it (BASE_IMAGE=stigmer-base:bookworm). It already holds every system package the basic
# Dockerfile would otherwise apt-get, so building the basic image from it needs no network for
# them. Node.js here is Debian's (18.x), not the Node.js 20 of the registry build.
#
# Usage: sudo sandbox/offline-base.sh [--force] [--tag NAME] [--mirror URL] [--no-upgrade]
#   --force        rebuild even when the image exists and was made by this recipe version
#   --tag NAME     image name (default: $STIGMER_BASE_IMAGE or stigmer-base:bookworm)
#   --mirror URL   Debian mirror (default: $DEBIAN_MIRROR or http://deb.debian.org/debian)
#   --no-upgrade   the bookworm release alone: no bookworm-updates / bookworm-security
# Environment: STIGMER_DEBOOTSTRAP_CACHE keeps the downloaded .debs between runs so a rebuild
# downloads nothing again (default /var/cache/stigmer-debootstrap); the root file system is
# assembled under TMPDIR (default /tmp) and removed afterwards.
set -euo pipefail

# Bump when the package list or the recipe changes: an image made by an older version is
# rebuilt, one made by this version is kept (unless --force).
RECIPE_VERSION=2
SUITE=bookworm

# Keep in step with SYSTEM_PACKAGES in Dockerfile.sandbox.basic (which skips apt-get when all
# of them are present), plus the Python that python:3.11-slim-bookworm brings on the registry path.
PACKAGES=(
  bash ca-certificates curl git jq less openssh-client procps tini unzip xz-utils
  make gcc g++ libc6-dev
  python3 python3-dev python3-venv python3-pip
  nodejs npm
)

tag="${STIGMER_BASE_IMAGE:-stigmer-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${STIGMER_DEBOOTSTRAP_CACHE:-/var/cache/stigmer-debootstrap}"
force=0
upgrade=1

die() { echo "offline-base: $*" >&2; exit 1; }
say() { echo "offline-base: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag="$2"; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; mirror="$2"; shift ;;
    --no-upgrade) upgrade=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

command -v docker >/dev/null 2>&1 || die "docker is not installed (or not on PATH)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running? may this user use it?)"

existing="$(docker image inspect --format '{{ index .Config.Labels "io.stigmer.base.recipe" }}' "$tag" 2>/dev/null || true)"
[ "$existing" = "<no value>" ] && existing=""
if [ "$force" = 0 ] && [ "$existing" = "$RECIPE_VERSION" ]; then
  say "$tag already exists (recipe $RECIPE_VERSION); nothing to do (--force rebuilds it)"
  exit 0
fi
if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag exists but was made by ${existing:+recipe }${existing:-something else}; rebuilding it"
fi

[ "$(id -u)" = 0 ] || die "debootstrap and chroot need root: run it with sudo"
command -v debootstrap >/dev/null 2>&1 \
  || die "debootstrap is not installed: apt-get install -y debootstrap (Debian/Ubuntu)"

start=$(date +%s)
mkdir -p "$cache/archives/partial"
root="$(mktemp -d "${TMPDIR:-/tmp}/stigmer-base-rootfs.XXXXXX")"
[ -n "$root" ] && [ "$root" != / ] || die "could not create a temporary directory"
logs="$root.logs"
mkdir -p "$logs"
cleanup() {
  for m in "$root/var/cache/apt/archives" "$root/proc"; do
    if mountpoint -q "$m" 2>/dev/null; then umount "$m" || true; fi
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

# 1. The minimal system. debootstrap only lays down the base; apt inside the chroot installs
#    the rest, because debootstrap's resolver mishandles alternatives and virtual packages
#    (npm's tree of node-* packages fails to configure when given to --include).
say "debootstrap $SUITE (minbase) from $mirror into $root"
debootstrap --variant=minbase --components=main --include=ca-certificates \
    --cache-dir="$cache" "$SUITE" "$root" "$mirror" >"$logs/debootstrap.out" 2>&1 || {
  cp "$root/debootstrap/debootstrap.log" "$logs/" 2>/dev/null || true
  tail -n 20 "$logs/debootstrap.out" >&2
  die "debootstrap failed (logs kept in $logs)"
}

# 2. apt sources as the official debian images have them: release, updates, security.
rm -f "$root/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\n' "$mirror"
  if [ "$upgrade" = 1 ]; then printf 'Suites: %s %s-updates\n' "$SUITE" "$SUITE"; else printf 'Suites: %s\n' "$SUITE"; fi
  printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  if [ "$upgrade" = 1 ]; then
    printf '\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\n' "$SUITE"
    printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
} >"$root/etc/apt/sources.list.d/debian.sources"

# Docs, man pages and translations are never unpacked (as in the official slim images), here
# and in images built FROM this one.
printf '%s\n' \
  'path-exclude /usr/share/doc/*' \
  'path-include /usr/share/doc/*/copyright' \
  'path-exclude /usr/share/man/*' \
  'path-exclude /usr/share/info/*' \
  'path-exclude /usr/share/locale/*' \
  'path-include /usr/share/locale/locale.alias' \
  >"$root/etc/dpkg/dpkg.cfg.d/90stigmer-slim"

# 3. The packages, with the .deb cache shared across runs; no service may start in the chroot.
say "installing ${PACKAGES[*]}"
mount -t proc proc "$root/proc"
mount --bind "$cache/archives" "$root/var/cache/apt/archives"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
# shellcheck disable=SC2016  # $@ is expanded by the chroot's shell
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    /bin/sh -ec 'apt-get update -qq
      apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade
      apt-get -y -qq -o Dpkg::Use-Pty=0 install --no-install-recommends "$@"' sh "${PACKAGES[@]}" \
    >"$logs/apt.out" 2>&1 || {
  tail -n 20 "$logs/apt.out" >&2
  die "installing packages failed (logs kept in $logs)"
}
rm -f "$root/usr/sbin/policy-rc.d"
umount "$root/var/cache/apt/archives"
umount "$root/proc"

# Container-friendly apt settings for images built FROM this one: no recommends, no caches.
printf '%s\n' \
  'APT::Install-Recommends "false";' \
  'APT::Install-Suggests "false";' \
  'Acquire::Languages "none";' \
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache "";' \
  'Dir::Cache::srcpkgcache "";' \
  >"$root/etc/apt/apt.conf.d/90stigmer-container"

# 4. Slim down: what debootstrap unpacked before the dpkg excludes existed, caches, logs,
#    bytecode, and traces of the build host.
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"*
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/debconf/"*-old \
  "$root/var/log/"*.log "$root/var/log/apt/"* "$root/root/.cache" "$root/tmp/"* "$root/var/tmp/"* \
  "$root/debootstrap"
find "$root/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id"
echo localhost >"$root/etc/hostname"

node_version="$(chroot "$root" node --version 2>/dev/null || echo unknown)"
python_version="$(chroot "$root" python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown)"
arch="$(chroot "$root" dpkg --print-architecture)"

# 5. The image.
say "importing as $tag"
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change 'LABEL org.opencontainers.image.title="stigmer-base"' \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE made offline with debootstrap, standing in for python:3.11-slim-bookworm where no registry is reachable\"" \
  --change 'LABEL org.opencontainers.image.source="https://github.com/stigmer/stigmer"' \
  --change "LABEL org.opencontainers.image.base.name=\"debian:$SUITE\"" \
  --change "LABEL org.opencontainers.image.created=\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"" \
  --change "LABEL io.stigmer.base.recipe=\"$RECIPE_VERSION\"" \
  --change "LABEL io.stigmer.base.python=\"$python_version\" io.stigmer.base.node=\"$node_version\" io.stigmer.base.arch=\"$arch\"" \
  --message "stigmer offline base ($SUITE, recipe $RECIPE_VERSION)" \
  - "$tag" >/dev/null
rm -rf "$logs"

size="$(docker image inspect --format '{{ .Size }}' "$tag")"
say "built $tag in $(( $(date +%s) - start ))s: $(( size / 1000000 )) MB, python $python_version, node $node_version, $arch"
