# torpor — checkpoint, restart and migrate running MPI jobs.
# `make help` lists the targets.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

GO        ?= go
BIN       := bin/torpor
GOFLAGS_TEST ?= -p 1
TEST_TIMEOUT ?= 60m
E2E_TIMEOUT ?= 6h
# Packages whose tests run in `make test`.
PKGS      ?= ./...
# Every Go module: the root and the nested ones (bench/plot keeps the plotting
# library out of the root module's graph).
MODULES   := . $(filter-out .,$(patsubst %/,%,$(dir $(shell git ls-files go.mod '*/go.mod'))))

.PHONY: help deps build workloads generate lint test e2e faults flaky mpich-stress cycles bench readme-bench demo demo-isolated clean

help: ## list the targets
	@grep -E '^[a-z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

deps: ## install Debian packages and, in private prefixes, CRIU >= 4.2, MPICH 4.2 and Open MPI 5 + PMIx 5 (root, idempotent)
	@bash scripts/deps.sh

build: ## build bin/torpor
	$(GO) build -o $(BIN) ./cmd/torpor

workloads: ## build the MPI test workloads for Open MPI (4.1; 5 and MPICH 4.2 when make deps installed them) and MPICH
	$(MAKE) -s -C bench/workloads

generate: ## regenerate eBPF objects (bpf2go) and gRPC code (protoc)
	$(GO) generate ./...

lint: ## gofmt; in every Go module: go mod tidy -diff, go vet (with and without cgo)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@for m in $(MODULES); do \
		if ! diff=$$(cd $$m && $(GO) mod tidy -diff 2>&1); then \
			echo "$$diff"; echo "lint: $$m/go.mod or go.sum is not tidy (see above): run (cd $$m && go mod tidy)" >&2; exit 1; \
		fi; \
	done
	@for m in $(MODULES); do \
		echo "(cd $$m && $(GO) vet ./... && CGO_ENABLED=0 $(GO) vet ./...)"; \
		(cd $$m && $(GO) vet ./... && CGO_ENABLED=0 $(GO) vet ./...) || exit 1; \
	done

test: deps build workloads ## install what is needed, run torpor doctor, then every test (root)
	./$(BIN) doctor
	$(MAKE) -s lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(GOFLAGS_TEST) $(PKGS)
	cd bench/plot && $(GO) test -count=1 ./...

# make e2e CYCLES=1000 [CYCLES_SEED=N] [RUN=TestRandomCycles]
CYCLES ?= 200
RUN    ?= .
e2e: deps build workloads ## the long end-to-end runs: every e2e test, CYCLES random cycles (root)
	CYCLES=$(CYCLES) CYCLES_ISOLATED=$$(( $(CYCLES) / 4 )) CYCLES_SEED=$(CYCLES_SEED) $(GO) test -count=1 -timeout $(E2E_TIMEOUT) -v -run '$(RUN)' ./e2e/...

faults: deps build workloads ## the fault-injection harness alone, every scenario of docs/faults.md (root)
	$(GO) test -count=1 -v -run 'TestDrainOutsideJobAborts|TestShimExitInDump|TestCRIUKillInDump|TestRestoreCancelled|TestAdopt' ./shim/agent/
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -v -run '^(TestFault|TestDaemonsEndToEnd$$|TestPostCopySourceDiesInFlight$$)' ./e2e/

# make flaky [N=10] [LOAD=1] [UNIT_ONLY=1]
flaky: deps build workloads ## the fault-point tests and the fault harness N times (default 10): "N passed, M failed" (root)
	@N=$(or $(N),10) LOAD=$(LOAD) UNIT_ONLY=$(UNIT_ONLY) bash scripts/flaky.sh

# make mpich-stress [RUNS=100] [CR=20]
mpich-stress: deps build workloads ## MPICH 4.2 ring and stencil RUNS times each (4/6 ranks, 1-3 hosts) and CR times through checkpoint/restart/migration: "X of N finished" (root)
	MPICH_STRESS_RUNS=$(or $(RUNS),100) MPICH_STRESS_CR=$(or $(CR),20) $(GO) test -count=1 -timeout $(E2E_TIMEOUT) -v -run '^TestMPICHStress$$' ./e2e/

cycles: ## CYCLES (default 200) random checkpoint/restart/migrate cycles alone, and CYCLES/4 on an isolated cluster (root)
	$(MAKE) -s e2e RUN='^TestRandomCycles(Isolated)?$$'

readme-bench: ## rewrite README.md's benchmark summary from bench/results/latest.json (no root, no run)
	$(GO) run ./bench/cmd/torpor-bench -readme README.md -from bench/results/latest.json

demo: deps build workloads ## checkpoint, restart and migrate a job on a simulated 4-host cluster (root)
	@bash scripts/demo.sh

demo-isolated: deps build workloads ## the demo on 5 simulated hosts that share no directory and no L2 segment (root)
	@bash scripts/demo-isolated.sh

bench: deps build workloads ## benchmarks (quick; FULL=1 for the complete run) -> bench/results/
	$(GO) build -o bin/torpor-bench ./bench/cmd/torpor-bench
	cd bench/plot && $(GO) build -o ../../bin/torpor-plot .
	./bin/torpor-bench $(if $(FULL),-full,-quick) -out bench/results -plot bin/torpor-plot

clean: ## remove build outputs
	rm -rf bin
	$(MAKE) -s -C bench/workloads clean
