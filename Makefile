# gwnomad. `make` builds everything into bin/; `make test` is what CI runs.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# gwnomad is built with Go 1.27.3, which the go command fetches from the Go
# module proxy (76 MB, once): go1.26.8 has standard-library vulnerabilities
# fixed in go1.26.9/10 (see `make vulncheck`), and 1.27.3 is the newer Go this
# workplace serves. The agents in tools/ are test fixtures, built with the
# machine's own Go (TOOLS_GOTOOLCHAIN).
GO_TOOLCHAIN      ?= go1.27.3
TOOLS_GOTOOLCHAIN ?= local
export GOTOOLCHAIN := $(GO_TOOLCHAIN)
# Analyzers read the standard library of the Go they were built with.
LINTBIN := $(BIN)/lint-$(GO_TOOLCHAIN)

.PHONY: all build tools test test-short demo demo-down bench resilience fuzz lint vulncheck clean

all: build tools

# The simulator is static (CGO off): the exec driver's chroot holds nothing else.
# `gwnomad version` prints VERSION (make build VERSION=v1.2.3) and the commit
# Go stamps; BUILDVCS asks for that stamp even where GOFLAGS turns it off,
# unless git cannot read the checkout (then the build would fail).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUILDVCS ?= $(shell git status --porcelain >/dev/null 2>&1 && echo auto || echo false)
build:
	@mkdir -p $(BIN)
	$(GO) build -buildvcs=$(BUILDVCS) -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./cmd/gwnomad ./cmd/devstack
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/gatewaysim

# Real agents, built from the Go module proxy as tool dependencies of their own
# modules (the main module stays free of their dependencies).
tools: $(BIN)/consul $(BIN)/nomad $(BIN)/pebble $(BIN)/h2spec

$(BIN)/consul: tools/consul/go.mod
	cd tools/consul && GOTOOLCHAIN=$(TOOLS_GOTOOLCHAIN) GOBIN=$(BIN) $(GO) install tool
$(BIN)/nomad: tools/nomad/go.mod
	cd tools/nomad && GOTOOLCHAIN=$(TOOLS_GOTOOLCHAIN) GOBIN=$(BIN) $(GO) install tool
# Pebble's version string is set by ldflags in its releases; do the same.
PEBBLE_VERSION := $(shell awk '$$1=="github.com/letsencrypt/pebble/v2"{print $$2}' tools/pebble/go.mod)
$(BIN)/pebble: tools/pebble/go.mod
	cd tools/pebble && GOTOOLCHAIN=$(TOOLS_GOTOOLCHAIN) GOBIN=$(BIN) $(GO) install -ldflags "-X main.version=$(PEBBLE_VERSION)" tool
# HTTP/2 conformance of the LB's HTTPS listener (lb/h2spec_test.go).
$(BIN)/h2spec: tools/h2spec/go.mod
	cd tools/h2spec && GOTOOLCHAIN=$(TOOLS_GOTOOLCHAIN) GOBIN=$(BIN) $(GO) install tool

# What CI runs: the Debian packages its tests need (scripts/test-deps.sh),
# static checks, unit and integration tests against real
# Consul, Nomad, Pebble and Chromium (the resilience suite included: about
# 5 of its ~15 minutes), then every fuzz target briefly. Packages run one at
# a time (-p 1): each starts its own agents, and the machine has 2 cores.
test: build tools $(LINTBIN)/staticcheck
	scripts/test-deps.sh
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(LINTBIN)/staticcheck ./...
	$(MAKE) --no-print-directory vulncheck
	$(GO) test -count=1 -timeout 40m -p 1 ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=10s

# Unit tests only (no agents).
test-short: build
	$(GO) test -short -count=1 ./...

# The README's first command: a local HA stack with gateways and the LB over TLS.
demo: all
	scripts/demo.sh

demo-down:
	@if [ -x $(BIN)/devstack ]; then $(BIN)/devstack down -dir .demo; else rm -rf .demo; fi

clean:
	rm -rf $(BIN) .demo

# gwnomad lb vs HAProxy, Caddy and direct (wrk); tables into BENCHMARKS.md.
# About 13 minutes; see BENCHMARKS.md.
bench: build tools
	bench/run.sh $(BENCH_ARGS)

# Zero-error scenarios under load on real Consul + Nomad (about 5 minutes).
resilience: build tools
	$(GO) test -count=1 -timeout 30m -v ./resilience/

# Each fuzz target for FUZZTIME (go test -fuzz allows one target a run).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./spec -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./lb/balancer -run '^$$' -fuzz '^FuzzMatch$$' -fuzztime $(FUZZTIME)
	$(GO) test ./lb/config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./lb/proxy -run '^$$' -fuzz '^FuzzChunked$$' -fuzztime $(FUZZTIME)
	$(GO) test ./lb/proxy -run '^$$' -fuzz '^FuzzLoopChunked$$' -fuzztime $(FUZZTIME)
	$(GO) test ./lb/proxy -run '^$$' -fuzz '^FuzzDifferential$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/gatewaysim -run '^$$' -fuzz '^FuzzParseAPI$$' -fuzztime $(FUZZTIME)

# go vet, staticcheck and govulncheck (installed into bin/ from the Go module
# proxy). vuln.go.dev is out of reach here, so govulncheck reads a database
# built from the golang.org/x/vulndb module (which the proxy serves) by
# tools/vulndb (GOVULNCHECK and the database pinned below). `make test` runs it.
STATICCHECK_VERSION ?= v0.8.2
GOVULNCHECK_VERSION ?= v1.9.0
VULNDB_VERSION ?= v0.0.0-20261105234957-e22db6528018
lint: $(LINTBIN)/staticcheck
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(LINTBIN)/staticcheck ./...
	$(MAKE) --no-print-directory vulncheck
vulncheck: $(LINTBIN)/govulncheck $(BIN)/vulndb/index/db.json
	$(LINTBIN)/govulncheck -db file://$(abspath $(BIN))/vulndb ./...
$(BIN)/vulndb/index/db.json:
	$(GO) mod download golang.org/x/vulndb@$(VULNDB_VERSION)
	cd tools/vulndb && $(GO) run . -src "$$($(GO) env GOMODCACHE)/golang.org/x/vulndb@$(VULNDB_VERSION)/data/osv" -out $(abspath $(BIN))/vulndb
$(LINTBIN)/staticcheck:
	GOBIN=$(LINTBIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(LINTBIN)/govulncheck:
	GOBIN=$(LINTBIN) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
