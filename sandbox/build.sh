#!/usr/bin/env bash
# Builds a sandbox image: `sandbox/build.sh basic` or `sandbox/build.sh full` (what
# `make sandbox-build-basic` / `make sandbox-build-full` run).
#
# The basic image starts FROM python:3.11-slim-bookworm when a registry is reachable, else
# FROM the offline base that offline-base.sh makes with debootstrap. OFFLINE chooses:
#   OFFLINE=auto (default)  the registry base if it is present locally or can be pulled,
#                           otherwise the offline base, with a message saying so
#   OFFLINE=1               the offline base, without trying the registry
#   OFFLINE=0               the registry base, or fail
#
# Environment (defaults in brackets):
#   SANDBOX_BASIC_IMAGE    tag of the basic image [stigmer-sandbox-basic:local]
#   SANDBOX_FULL_IMAGE     tag of the full image [stigmer-sandbox-full:local]
#   SANDBOX_REGISTRY_BASE  [python:3.11-slim-bookworm]
#   SANDBOX_OFFLINE_BASE   [stigmer-base:bookworm]
#   SANDBOX_EXTRA_CA       CA certificate files the image should trust (a TLS-intercepting
#                          proxy) [the host's /usr/local/share/ca-certificates/*.crt]; empty: none
#   SANDBOX_BUILD_NETWORK  network of the build's RUN steps [host]
#   DOCKER_BUILD_ARGS      more arguments for docker build (e.g. --no-cache, --build-arg X=Y)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
flavour="${1:-}"
basic_tag="${SANDBOX_BASIC_IMAGE:-stigmer-sandbox-basic:local}"
full_tag="${SANDBOX_FULL_IMAGE:-stigmer-sandbox-full:local}"
registry_base="${SANDBOX_REGISTRY_BASE:-python:3.11-slim-bookworm}"
offline_base="${SANDBOX_OFFLINE_BASE:-stigmer-base:bookworm}"
offline="${OFFLINE:-auto}"
network="${SANDBOX_BUILD_NETWORK:-host}"

die() { echo "sandbox-build: $*" >&2; exit 1; }
say() { echo "sandbox-build: $*" >&2; }

case "$flavour" in
  basic) dockerfile=Dockerfile.sandbox.basic; tag="$basic_tag" ;;
  full) dockerfile=Dockerfile.sandbox.full; tag="$full_tag" ;;
  *) die "usage: $0 basic|full" ;;
esac
case "$offline" in auto|0|1) ;; *) die "OFFLINE must be auto, 0 or 1, not '$offline'" ;; esac
command -v docker >/dev/null 2>&1 || die "docker is not installed (or not on PATH)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running? may this user use it?)"

# SANDBOX_IMAGE_REF: the name the apt-get message tells users to build FROM.
build_args=(--build-arg "SANDBOX_IMAGE_REF=$tag")
if [ "$flavour" = basic ]; then
  base=""
  if [ "$offline" != 1 ]; then
    if docker image inspect "$registry_base" >/dev/null 2>&1; then
      base="$registry_base"
    else
      say "pulling $registry_base"
      if timeout 300 docker pull "$registry_base" >&2; then
        base="$registry_base"
      elif [ "$offline" = 0 ]; then
        die "cannot pull $registry_base (OFFLINE=0); OFFLINE=1 builds from the offline base instead"
      else
        say "no registry reachable: building from the offline base $offline_base instead"
        say "(Debian's Node.js 18 instead of NodeSource's Node.js; OFFLINE=1 skips the pull)"
      fi
    fi
  fi
  if [ -z "$base" ]; then
    # Returns at once when the image exists and was made by the current recipe; needs root
    # only to (re)build it.
    STIGMER_BASE_IMAGE="$offline_base" "$here/offline-base.sh"
    base="$offline_base"
  fi
  build_args+=(--build-arg "BASE_IMAGE=$base")
else
  docker image inspect "$basic_tag" >/dev/null 2>&1 \
    || die "$basic_tag is missing: make sandbox-build-basic first"
  build_args+=(--build-arg "BASIC_IMAGE=$basic_tag")
  base="$basic_tag"
fi

# A private copy of the build context, so that the CA certificates never land in the source tree.
ctx="$(mktemp -d "${TMPDIR:-/tmp}/stigmer-sandbox-ctx.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp -a "$here/." "$ctx/"
if [ -z "${SANDBOX_EXTRA_CA+set}" ]; then
  shopt -s nullglob
  extra_ca=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
else
  read -r -a extra_ca <<<"$SANDBOX_EXTRA_CA"
fi
for ca in "${extra_ca[@]}"; do
  [ -r "$ca" ] || die "SANDBOX_EXTRA_CA: cannot read $ca"
  cp "$ca" "$ctx/ca-certificates/$(basename "${ca%.*}").crt"
done
if [ "${#extra_ca[@]}" -gt 0 ]; then
  say "trusting extra CA certificates: ${extra_ca[*]} (SANDBOX_EXTRA_CA= for none)"
fi

# Labels from the last commit that changed this folder, not from the clock or HEAD: a rebuild
# of an unchanged recipe is then a full cache hit and keeps the image ID, so stigmer's
# containers made from it stay reusable.
revision="$(git -C "$here" log -1 --format=%h -- . 2>/dev/null || true)"
created="$(git -C "$here" log -1 --format=%cI -- . 2>/dev/null || true)"
version="$(git -C "$here" describe --tags --always "${revision:-HEAD}" 2>/dev/null || true)"
build_args+=(--build-arg "VERSION=${version:-dev}" --build-arg "REVISION=${revision:-unknown}"
  --build-arg "CREATED=${created:-unknown}")

# The recipe: the files of the build context (CA certificates included; not those
# .dockerignore leaves out), the build arguments
# and the base image's ID. The image carries it as the label io.stigmer.recipe; an image with
# this label is up to date and kept, any other is rebuilt (a changed Dockerfile, base or
# requirements.txt is never reused because a tag of that name exists).
base_id="$(docker image inspect --format '{{ .Id }}' "$base")"
recipe="$( {
  (cd "$ctx" && find . -type f ! -name .dockerignore ! -name README.md ! -name '*.yml' \
    ! -name offline-base.sh ! -name build.sh ! -name test-image.sh -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  printf '%s\n' "$dockerfile" "$base_id" "${build_args[@]}" "${DOCKER_BUILD_ARGS:-}"
} | sha256sum | cut -c1-64)"
existing="$(docker image inspect --format '{{ index .Config.Labels "io.stigmer.recipe" }}' "$tag" 2>/dev/null || true)"
if [ "$existing" = "$recipe" ]; then
  size="$(docker image inspect --format '{{ .Size }}' "$tag")"
  say "$tag is up to date (recipe ${recipe:0:12}, FROM $base): $(( size / 1000000 )) MB"
  exit 0
fi
if [ -n "$existing" ] && [ "$existing" != "<no value>" ]; then
  say "$tag was made by recipe ${existing:0:12}, this is ${recipe:0:12}: rebuilding it"
fi

say "building $tag FROM $base"
start=$(date +%s)
# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of words
docker build --network "$network" -f "$ctx/$dockerfile" \
  "${build_args[@]}" --label "io.stigmer.recipe=$recipe" \
  ${DOCKER_BUILD_ARGS:-} -t "$tag" "$ctx"
size="$(docker image inspect --format '{{ .Size }}' "$tag")"
say "built $tag FROM $base in $(( $(date +%s) - start ))s: $(( size / 1000000 )) MB"
