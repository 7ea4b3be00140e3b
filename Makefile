# Vauban — developer entry points. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with Vauban and its development tools

.PHONY: binaries
binaries: venv ## build (once, cached in ~/.cache/vauban) the control plane and test tools
	$(BIN)/vauban dev build

.PHONY: crds
crds: venv ## regenerate crds/ from the API models
	$(BIN)/vauban crds

.PHONY: lint
lint: venv ## ruff, mypy, import layers, CRD drift
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vauban crds --check

.PHONY: unit
unit: venv ## fast tests of the pure logic
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: lint binaries ## the whole suite: lint, unit, and integration against a real control plane
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: run
run: binaries ## run the operator (on a local control plane unless VAUBAN_KUBECONFIG is set), with samples/
	$(BIN)/vauban dev run --samples samples

.PHONY: clean
clean: ## remove the virtualenv and local state (not the binary cache)
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
