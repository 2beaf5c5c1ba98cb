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

.PHONY: all build run test lint vet fmt-check staticcheck buf-lint proto proto-check unit e2e conformance chaos clean help

all: build

help:
	@echo "make run      build and start a local cluster (erlmcp up, data in ./.erlmcp)"
	@echo "make test     lint + unit/integration tests with coverage + e2e (what CI runs)"
	@echo "make build    build $(BIN)"
	@echo "make proto    regenerate Go code from proto/ with buf"
	@echo "make lint     gofmt, go vet, staticcheck, buf lint, shellcheck"
	@echo "make conformance  the official MCP conformance suite against erlmcp up"
	@echo "make chaos    long porcupine-checked runs of the store under faults"

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/erlmcp

run: build
	./$(BIN) up

test: lint unit e2e

lint: fmt-check vet staticcheck buf-lint proto-check shellcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck ./...

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

clean:
	rm -rf bin

shellcheck:
	shellcheck scripts/*.sh .ci/run

# The same loadtest against the go-sdk single process, one erlmcp worker and
# the full HA path; see docs/benchmarks.md (knobs: BENCH_* in scripts/bench.sh).
.PHONY: bench
bench:
	scripts/bench.sh
