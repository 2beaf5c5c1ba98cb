# erlmcp — build, run and test. `make run` starts a local cluster,
# `make test` runs everything CI runs. Tools come from the Go module proxy
# through tools/go.mod (`go tool -modfile=tools/go.mod ...`), pinned there.

GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
BIN       := bin/erlmcp
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# Packages with unit and in-process integration tests (everything but e2e).
UNIT_PKGS  = $(shell $(GO) list ./... | grep -v /e2e)

.PHONY: all build run test lint vet fmt-check staticcheck buf-lint proto proto-check unit k8s-test e2e conformance chaos ha-load-test clean help

all: build

help:
	@echo "make run      build and start a local cluster (erlmcp up, data in ./.erlmcp)"
	@echo "make test     lint + unit/integration tests with coverage + e2e (what CI runs)"
	@echo "make build    build $(BIN)"
	@echo "make proto    regenerate Go code from proto/ with buf"
	@echo "make lint     gofmt, go vet, staticcheck, buf lint, shellcheck"
	@echo "make conformance  the official MCP conformance suite against erlmcp up"
	@echo "make chaos    long porcupine-checked runs of the store under faults, long HA scenarios"
	@echo "make ha-load-test [SCENARIO=...]  fault scenarios under MCP load with budgets"
	@echo "make bench    benchmarks: erlmcp vs the official go-sdk server, the store"

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/erlmcp

run: build
	./$(BIN) up

test: lint unit k8s-test e2e

lint: fmt-check vet staticcheck buf-lint proto-check shellcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd deploy/k8s && $(GO) vet ./...
	cd bench && $(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck ./...
	cd deploy/k8s && $(GO) tool -modfile=../../tools/go.mod staticcheck ./...
	cd bench && $(GO) tool -modfile=../tools/go.mod staticcheck ./...

buf-lint:
	$(TOOL) buf lint

proto:
	$(TOOL) buf generate
	$(TOOL) buf lint

# The committed generated code must match the .proto sources.
proto-check:
	@tmp=$$(mktemp -d); \
	$(TOOL) buf generate -o $$tmp && \
	diff -r $$tmp/proto proto -x '*.proto' >/dev/null || { echo "generated code is stale: run make proto"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

# Coverage per package is printed by go test -cover.
unit:
	$(GO) test -race -cover -timeout 15m $(UNIT_PKGS)

# Kubernetes manifests and the Dockerfile, rendered and checked by a test in
# their own module (deploy/k8s keeps kustomize and k8s.io/api out of go.mod).
k8s-test: build
	cd deploy/k8s && ERLMCP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./...

# e2e includes TestConformance: the official MCP conformance suite (npm,
# cached in $(or $(ERLMCP_CACHE_DIR),.cache)) against a real `erlmcp up`.
e2e:
	$(GO) test -count=1 -timeout 15m ./e2e/...

conformance:
	$(GO) test -count=1 -timeout 15m -run Conformance -v ./e2e/

# Long linearizability runs under injected faults (leader kills and restarts,
# partitions, pauses), checked with porcupine. Each prints its seed; replay
# one with ERLMCP_CHAOS_SEED=<seed> (store) or MULTIRAFT_SEED=<seed> (engine).
chaos:
	ERLMCP_CHAOS_LONG=1 $(GO) test -count=1 -timeout 30m -run TestSessionStoreLinearizable -v ./sessionstore/
	$(GO) test -count=3 -timeout 30m -run TestLinearizableUnderFaults -v ./sessionstore/multiraft/
	ERLMCP_HA_LONG=1 ERLMCP_HA_STRICT=1 $(GO) test -count=1 -timeout 60m -run 'TestHALoadScenarios|TestStoreLossAndLeaderKillUnderLoad' -v ./e2e/

# Fault scenarios under load against a cluster the script starts
# (SCENARIO=worker_failure etc.; default all), each judged against its budget.
ha-load-test: build
	ERLMCP_BIN=$(CURDIR)/$(BIN) scripts/ha-load-test.sh $(or $(SCENARIO),all)

clean:
	rm -rf bin

shellcheck:
	shellcheck scripts/*.sh .ci/run

# The same loadtest against the go-sdk single process, one erlmcp worker and
# the full HA path; see docs/benchmarks.md (knobs: BENCH_* in scripts/bench.sh).
.PHONY: bench
bench:
	scripts/bench.sh
