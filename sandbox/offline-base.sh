#!/usr/bin/env bash
# Builds the sandbox's base image without any image registry: debootstrap a Debian bookworm
# root file system from a Debian mirror, install the sandbox's system packages into it with apt,
# then `docker import` it.
#
# Why: Dockerfile.sandbox.basic normally starts FROM python:3.11-slim-bookworm, which needs a
# registry. On machines that reach a Debian mirror but no image registry, this image stands in
# for it (BASE_IMAGE=stigmer-base:bookworm). It already holds every system package the basic
# Dockerfile would otherwise apt-get, so building the basic image from it needs no network for
# them. Node.js here is Debian's (18.x, end of life upstream; no Debian suite reachable from
# bookworm ships a supported LTS), not the NodeSource Node.js of the registry build.
#
# Kept small (the basic image built on it stays under 450 MB, sandbox/test-image.sh checks):
# minbase, no recommends, and dpkg path excludes (below) so that docs, translations, static
# libraries, sanitizer runtimes and other files a sandbox never uses are not even unpacked,
# here or in images built FROM this one. The root file system is imported as one layer.
#
# Usage: sudo sandbox/offline-base.sh [--force] [--tag NAME] [--mirror URL] [--no-upgrade]
#   --force        rebuild even when the image exists and was made by this recipe
#   --tag NAME     image name (default: $STIGMER_BASE_IMAGE or stigmer-base:bookworm)
#   --mirror URL   Debian mirror (default: $DEBIAN_MIRROR or http://deb.debian.org/debian)
#   --no-upgrade   the bookworm release alone: no bookworm-updates / bookworm-security
# Environment: STIGMER_DEBOOTSTRAP_CACHE keeps the downloaded .debs between runs so a rebuild
# downloads nothing again (default /var/cache/stigmer-debootstrap); the root file system is
# assembled under TMPDIR (default /tmp) and removed afterwards.
set -euo pipefail

SUITE=bookworm

# Keep in step with the package list in Dockerfile.sandbox.basic (which skips apt-get when all
# of them are present), plus the Python that python:3.11-slim-bookworm brings on the registry
# path. No python3-pip: the sandbox's pip is the virtualenv's (python3-venv brings its wheel).
PACKAGES=(
  bash ca-certificates curl git jq less openssh-client procps tini unzip xz-utils
  make gcc g++ libc6-dev
  python3 python3-dev python3-venv
  nodejs npm
)

# Files dpkg never unpacks (dpkg.cfg path-exclude; `*` also matches `/`). Docs, man pages and
# translations as in the official slim images; then what a sandbox has no use for: static
# libraries nobody links (`gcc -static` is not supported; the small glibc stub archives such as
# libc_nonshared.a and libpthread.a stay), the sanitizer runtimes (-fsanitize=…), gcc's LTO
# compiler and lto-dump (-flto is not supported; Python's build flags do not use it), the gold
# linker and dwp (gcc links with ld.bfd; -fuse-ld=gold is not supported), gprofng, Perl's
# headers and CJK encodings, git's servers, and the TypeScript declarations, source maps and
# READMEs in Debian's npm tree.
DPKG_EXCLUDES=(
  '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
  '/usr/share/lintian/*' '/usr/share/linda/*' '/usr/share/bug/*'
  '/usr/bin/*lto-dump*'
  '/usr/lib/x86_64-linux-gnu/libasan.so*' '/usr/lib/x86_64-linux-gnu/libtsan.so*'
  '/usr/lib/x86_64-linux-gnu/liblsan.so*' '/usr/lib/x86_64-linux-gnu/libubsan.so*'
  '/usr/lib/x86_64-linux-gnu/libhwasan.so*' '/usr/lib/x86_64-linux-gnu/libgprofng*'
  '/usr/lib/aarch64-linux-gnu/libasan.so*' '/usr/lib/aarch64-linux-gnu/libtsan.so*'
  '/usr/lib/aarch64-linux-gnu/liblsan.so*' '/usr/lib/aarch64-linux-gnu/libubsan.so*'
  '/usr/lib/aarch64-linux-gnu/libhwasan.so*' '/usr/lib/aarch64-linux-gnu/libgprofng*'
  '/usr/lib/gcc/*/libasan*' '/usr/lib/gcc/*/libtsan*' '/usr/lib/gcc/*/liblsan*'
  '/usr/lib/gcc/*/libubsan*' '/usr/lib/gcc/*/libhwasan*' '/usr/lib/gcc/*/libstdc++.a'
  '/usr/lib/gcc/*/libstdc++fs.a' '/usr/lib/gcc/*/libsupc++.a' '/usr/lib/gcc/*/libgomp.a'
  '/usr/lib/gcc/*/libitm.a' '/usr/lib/gcc/*/libatomic.a' '/usr/lib/gcc/*/libquadmath.a'
  '/usr/lib/*/libc.a' '/usr/lib/*/libm-2.*.a' '/usr/lib/*/libmvec.a' '/usr/lib/*/libcrypto.a'
  '/usr/lib/*/libssl.a' '/usr/lib/*/libpython3.*.a' '/usr/lib/python3.*/config-*/*.a'
  '/usr/lib/*/libz.a' '/usr/lib/*/libuv.a' '/usr/lib/*/libcares*.a' '/usr/lib/*/libbrotli*.a'
  '/usr/lib/*/perl/5.*/CORE/*.h' '/usr/lib/*/perl/5.*/auto/Encode/CN/*'
  '/usr/lib/*/perl/5.*/auto/Encode/JP/*' '/usr/lib/*/perl/5.*/auto/Encode/KR/*'
  '/usr/lib/*/perl/5.*/auto/Encode/TW/*' '/usr/share/perl/5.*/pod/*' '/usr/share/perl/5.*/*.pod'
  '/usr/lib/git-core/git-daemon' '/usr/lib/git-core/git-http-backend'
  '/usr/lib/git-core/git-imap-send' '/usr/lib/git-core/git-shell' '/usr/bin/git-shell'
  '/usr/lib/git-core/scalar' '/usr/bin/scalar' '/usr/share/gitweb/*'
  '/usr/share/nodejs/*.d.ts' '/usr/share/nodejs/*.d.mts' '/usr/share/nodejs/*.d.cts'
  '/usr/share/nodejs/*.js.map' '/usr/share/nodejs/*.mjs.map' '/usr/share/nodejs/*.cjs.map'
  '/usr/share/nodejs/*.ts.map' '/usr/share/nodejs/*/README.md' '/usr/share/nodejs/*/CHANGELOG.md'
  '/usr/share/nodejs/@types/*'
  '/usr/lib/gcc/*/lto1'
  '/usr/bin/*ld.gold' '/usr/bin/*-gold' '/usr/bin/gold' '/usr/bin/*dwp' '/usr/bin/gp-*'
  '/usr/bin/*-gp-*'
  '/usr/bin/*gprofng' '/usr/lib/*/gprofng/*' '/etc/gprofng.rc'
)
# Debian's npm pulls in a tree of node-* packages, some of them only for building other
# packages (webpack, babel, eslint, core-js, ...). npm never loads these (traced over its
# commands, and outside the closure of its package.json dependencies); their files go too.
# Not acorn, acorn-walk, cjs-module-lexer, undici: Debian's libnode loads them as builtins.
DPKG_INCLUDES=('/usr/share/doc/*/copyright' '/usr/share/locale/locale.alias')
NPM_UNUSED=(
  webpack @webassemblyjs webassemblyjs @babel core-js core-js-pure core-js-compat eslint terser
  caniuse-lite lodash lodash-es lodash-cli web-streams-polyfill es-abstract handlebars
  regenerate-unicode-properties neo-async node-fetch istanbul istanbul-reports esquery
  esprima js-yaml yargs source-map postcss ajv @jridgewell
)
# Their bin/ folders stay: maintainer scripts register them as alternatives (babeljs-7).
for p in "${NPM_UNUSED[@]}"; do
  DPKG_EXCLUDES+=("/usr/share/nodejs/$p/*"); DPKG_INCLUDES+=("/usr/share/nodejs/$p/*bin/*")
done

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

# The recipe: this script and what it was asked for. An image labelled with another recipe
# (an older version of this script, another mirror) is rebuilt; one with this recipe is kept.
recipe="$( { sha256sum <"$0"; printf 'suite=%s mirror=%s upgrade=%s\n' "$SUITE" "$mirror" "$upgrade"; } \
  | sha256sum | cut -c1-64)"
existing="$(docker image inspect --format '{{ index .Config.Labels "io.stigmer.recipe" }}' "$tag" 2>/dev/null || true)"
[ "$existing" = "<no value>" ] && existing=""
if [ "$force" = 0 ] && [ "$existing" = "$recipe" ]; then
  say "$tag already exists (recipe ${recipe:0:12}); nothing to do (--force rebuilds it)"
  exit 0
fi
if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag exists but was made by ${existing:+recipe ${existing:0:12}}${existing:-another recipe}; rebuilding it"
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

# DPKG_EXCLUDES are never unpacked, here and in images built FROM this one.
{
  printf 'path-exclude %s\n' "${DPKG_EXCLUDES[@]}"
  printf 'path-include %s\n' "${DPKG_INCLUDES[@]}"
} >"$root/etc/dpkg/dpkg.cfg.d/90stigmer-slim"

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
#    The same patterns as dpkg's, matched the way dpkg does (fnmatch, `*` matches `/`).
# shellcheck disable=SC2016
chroot "$root" /usr/bin/python3 -I -B -c '
import fnmatch, os, sys
excl, incl, skip = [], [], 0
for a in sys.argv[1:]:
    if a == "--": skip = 1; continue
    (incl if skip else excl).append(a)
for top in ("/usr", "/etc", "/var"):
    for dp, dns, fns in os.walk(top):
        for f in fns:
            p = os.path.join(dp, f)
            if any(fnmatch.fnmatchcase(p, e) for e in excl) and not any(fnmatch.fnmatchcase(p, i) for i in incl):
                os.unlink(p)
' "${DPKG_EXCLUDES[@]}" -- "${DPKG_INCLUDES[@]}"
find "$root/usr/share/doc" "$root/usr/share/locale" "$root/usr/share/man" "$root/usr/share/info" \
  -mindepth 1 -depth -type d -empty -delete
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/debconf/"*-old \
  "$root/var/log/"*.log "$root/var/log/apt/"* "$root/root/.cache" "$root/tmp/"* "$root/var/tmp/"* \
  "$root/debootstrap" "$root/var/cache/apt/archives/"*.deb "$root/var/cache/apt/archives/partial/"*
# (debootstrap leaves the .debs of the minimal system in the root file system's apt cache,
#  under the bind mount apt used: 35 MB nobody needs.)
# git's two copies of itself (/usr/bin/git and /usr/lib/git-core/git) as one file.
if cmp -s "$root/usr/bin/git" "$root/usr/lib/git-core/git"; then
  ln -f "$root/usr/bin/git" "$root/usr/lib/git-core/git"
fi
find "$root/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id"
echo localhost >"$root/etc/hostname"

# What the excludes must not break: npm (NPM_UNUSED) and the compilers.
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp sh -ec '
  npm --version >/dev/null; npm ls -g >/dev/null; npm help install >/dev/null
  git --version >/dev/null; git -C /tmp init -q g && rm -rf /tmp/g
  printf "int main(void){return 0;}\n" >/tmp/t.c && gcc -o /tmp/t /tmp/t.c && /tmp/t
  printf "#include <string>\nint main(){std::string s; return (int)s.size();}\n" >/tmp/t.cc && g++ -o /tmp/t /tmp/t.cc && /tmp/t
  rm -rf /tmp/t /tmp/t.c /tmp/t.cc /tmp/.npm' >"$logs/check.out" 2>&1 || {
  tail -n 20 "$logs/check.out" >&2
  die "the slimmed system fails a check (logs kept in $logs)"
}
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
  --change "LABEL io.stigmer.recipe=\"$recipe\"" \
  --change "LABEL io.stigmer.base.python=\"$python_version\" io.stigmer.base.node=\"$node_version\" io.stigmer.base.arch=\"$arch\"" \
  --message "stigmer offline base ($SUITE, recipe ${recipe:0:12})" \
  - "$tag" >/dev/null
rm -rf "$logs"

size="$(docker image inspect --format '{{ .Size }}' "$tag")"
say "built $tag in $(( $(date +%s) - start ))s: $(( size / 1000000 )) MB, python $python_version, node $node_version, $arch"
