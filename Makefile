# keyfence — the targets a developer and CI use. `make help` lists them.

GO ?= go
# Fuzz time per target in `make test` / `make fuzz-short`.
FUZZTIME ?= 10s
# Extra flags for `make run`, e.g. make run RUN_ARGS='--tenant acme'.
RUN_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z_-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/keyfence
	$(GO) build -trimpath -o bin/keyfence ./cmd/proxy

.PHONY: run
# devrun is built and run rather than `go run`: go run exits 1 after Ctrl-C
# even when keyfence stopped cleanly, and does not pass SIGTERM on.
run: build ## start a Redis (real if installed, else embedded) and keyfence in front of it on 127.0.0.1:6380
	$(GO) build -o bin/devrun ./cmd/devrun
	bin/devrun $(RUN_ARGS)

# The whole suite, as CI runs it: test dependencies, vet, race-enabled tests,
# then a short fuzz of every fuzz target. go test's default parallelism
# (-p = number of CPUs) is kept: more would only make -race slower on 2 cores.
.PHONY: test
test: ## install test deps, vet, run all tests with -race, short fuzz
	bash scripts/install-test-deps.sh
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	@$(MAKE) --no-print-directory fuzz-short

.PHONY: fuzz-short
fuzz-short: ## run every fuzz target for FUZZTIME (default 10s)
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' bash scripts/fuzz-short.sh

.PHONY: generate
generate: ## regenerate generated code (go generate ./...)
	$(GO) generate ./...

.PHONY: lint
lint: ## gofmt (must list nothing) and go vet
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

.PHONY: docker
docker: ## build the container image keyfence
	docker build -t keyfence .

.PHONY: clean
clean: ## remove build output
	rm -rf bin

# The benchmark targets (`make bench`, `make bench-go`, ...) live with the load tools.
include bench/Makefile.inc
