# topo — the two headline commands are `make demo` and `make test` (README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
NODES ?= 3
SOAK_SECS ?= 600
SOAK_SEED ?=
# etcd members (1, 3 or 5) and controller replicas of `make lab-up`
ETCD ?= 1
CONTROLLERS ?= 1
LAB := e2e/lab/lab.sh
export TOPO_BIN ?= $(CURDIR)/target/debug

.PHONY: all deps build test test-unit test-e2e bench bench-peers bench-scale bench-density soak fuzz lint fmt demo lab-up lab-down clean deb

all: build

## deps: install the Debian packages topo's build, tests and lab need (root, idempotent)
deps:
	@bash e2e/lab/install-deps.sh

## build: compile every binary (topo-controller, topo-agent, topoctl)
build:
	$(CARGO) build --workspace --bins

## test: install what the tests need, then run them all (unit, etcd integration, end-to-end lab)
test: deps build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

## test-unit: everything but the end-to-end lab tests (still needs etcd, OVS, Docker: root)
test-unit: deps
	$(CARGO) test --workspace --exclude topo-e2e --no-fail-fast

## test-e2e: the end-to-end tests; each test binary runs its own lab in a private namespace
test-e2e: deps build
	$(CARGO) test -p topo-e2e --no-fail-fast

## lint: formatting, clippy (warnings are errors), no import cycles between modules
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# python3 comes with openvswitch-switch (install-deps.sh)
	python3 .ci/module-cycles schema controller cli

fmt:
	$(CARGO) fmt --all

## bench: measurements written to BENCHMARKS.md (see there for the figures and machine)
bench: deps
	$(CARGO) build --release --workspace --bins
	@mkdir -p target/bench
	./target/release/topo-bench | tee target/bench/controller.md
	TOPO_BIN=$(CURDIR)/target/release ./target/release/lab-bench | tee target/bench/lab.md
	TOPO_BIN=$(CURDIR)/target/release ./target/release/rewire-bench --rewires 20 | tee target/bench/rewire.md
	TOPO_BIN=$(CURDIR)/target/release ./target/release/dataplane-bench --secs 10 --rounds 5 | tee target/bench/dataplane.md
	@echo "results in target/bench/*.md; BENCHMARKS.md quotes them with the machine"

## bench-peers: topo and OVN (Debian's 23.03) side by side on one three-host lab, 30 containers
## each: networking per container, the whole topology, idle CPU/RSS, recovery (BENCHMARKS.md)
bench-peers: deps
	$(CARGO) build --release --workspace --bins
	@mkdir -p target/bench
	TOPO_BIN=$(CURDIR)/target/release ./target/release/peers-bench

## bench-scale: 1,000 hollow agents (the real agent runtime, its own etcd identity, watch,
## reports and heartbeat each; the recording fakes as hosts) in one process against the real
## etcd and controller; 20 containers per node at 100, 300 and 1,000 nodes (BENCHMARKS.md).
## The fakes live only in scale-bench (feature scale-bench), never in topo-controller/topo-agent.
## Then topo-bench plans 100,000 containers on 5,000 nodes (no agents).
SCALE_NODES ?= 100,300,1000
bench-scale: deps
	$(CARGO) build --release -p topo-controller --bin topo-controller --bin topo-bench
	$(CARGO) build --release -p topo-controller --features scale-bench --bin scale-bench
	@mkdir -p target/bench
	./target/release/scale-bench --nodes $(SCALE_NODES) --containers-per-node 20 | tee target/bench/scale.md
	./target/release/topo-bench --nodes 5000 --containers 100000 --links 0 --small-nodes 500 \
	  --small-containers 10000 --small-links 0 | tee target/bench/plan-5000.md

## bench-density: 10, 100 and 250 containers on one node — converge from nothing, adopt after
## an agent restart (what it rewrote), one change among them, the agent at rest (BENCHMARKS.md)
bench-density: deps
	$(CARGO) build --release --workspace --bins
	@mkdir -p target/bench
	TOPO_BIN=$(CURDIR)/target/release ./target/release/density-bench --ovn | tee target/bench/density.md

## soak: SOAK_SECS (default 600) of random changes and faults on a lab (3 hosts, 3 etcd
## members) with the invariants checked; SOAK_SEED replays a run (RELIABILITY.md)
soak: deps build
	$(CARGO) build -p topo-e2e --bin soak
	SOAK_SECS=$(SOAK_SECS) SOAK_SEED=$(SOAK_SEED) ./target/debug/soak

## fuzz: the property-based fuzzers (manifest parser, API decoders, OVSDB decoder), each
## with FUZZ_CASES cases (`make test` runs them with a few hundred); optimised, since the
## generators are most of the work. Each prints its cases, time and peak RSS.
FUZZ_CASES ?= 1000000
fuzz:
	TOPO_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p topo-schema --test fuzz_manifest -- --nocapture
	TOPO_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p topo-controller --test fuzz_api -- --nocapture
	TOPO_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p topo-agent --test fuzz_ovsdb -- --nocapture

## lab-up: eval "$$(make -s lab-up NODES=3 [ETCD=3] [CONTROLLERS=2])" — prints only export lines on stdout
lab-up: deps build
	@bash $(LAB) up --nodes $(NODES) --etcd $(ETCD) --controllers $(CONTROLLERS)

## lab-down: remove every lab process, namespace, interface and state (also after a crash)
lab-down:
	@bash $(LAB) down

## demo: a three-host lab, manifests/demo.yaml applied, Ready waited for, reachability shown
## deb: Debian packages (topo-controller, topo-agent, topoctl) into target/debian/ (docs/deploy.md)
deb: deps
	$(CARGO) build --release -p topo-controller -p topo-agent -p topoctl -p topo-pki --bins
	@bash deploy/build-debs.sh

demo: deps build
	@bash e2e/demo.sh
