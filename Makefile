# Vauban — developer entry points. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
# Where pods run: real (containers in a network namespace of the project's; root, Linux, the
# Debian packages .ci/run installs), kwok (fake nodes), or auto: real where the machine can.
NODE ?= auto

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
binaries: venv ## build (once, cached in ~/.cache/vauban) the cluster, its images and test tools
	$(BIN)/vauban dev build --node $(NODE)

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
unit: venv ## fast tests: the pure logic, and whole reconciles on fakes (tests/controllers)
	$(BIN)/pytest tests/unit tests/controllers $(PYTEST_ARGS)

.PHONY: test
test: lint binaries ## the whole suite: lint, unit, integration, and end to end on the real node
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: e2e
e2e: binaries ## the end-to-end tier only (tests/e2e, real node)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

.PHONY: run
run: binaries ## run Vauban on a local cluster (unless VAUBAN_KUBECONFIG is set), with samples/
	$(BIN)/vauban dev run --node $(NODE) --samples samples

.PHONY: clean
clean: ## remove the virtualenv and local state (not the binary cache)
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache

# -- Packaging: images, the Helm chart, a kind cluster (docs/install.md) ---------------------

CONTAINER_TOOL ?= docker
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/vauban/__init__.py)
IMAGE_REGISTRY ?= ghcr.io/vauban-dev
OPERATOR_IMAGE ?= $(IMAGE_REGISTRY)/vauban
AGENT_IMAGE ?= $(IMAGE_REGISTRY)/vauban-agent
KIND ?= kind
KIND_CLUSTER ?= vauban
KUBECTL ?= kubectl
# The CloudNativePG release `make kind-up` installs: the one Vauban is tested against.
CLOUDNATIVEPG_VERSION ?= 1.30.1
# helm built from its Go module (cached), unless HELM names one; resolved only when used.
HELM ?= $(shell $(BIN)/python -c 'from vauban.devcluster.build import ensure_tool; print(ensure_tool("helm"))')
HELM_KUBE_VERSION := 1.36.3

# e.g. --build-arg PYTHON_IMAGE=<mirror>/python@sha256:<digest> --build-arg PGDG_URL=<mirror>
IMAGE_BUILD_ARGS ?=

.PHONY: images
images: ## build the operator and backup-agent images (CONTAINER_TOOL=podman for podman)
	$(CONTAINER_TOOL) build -f Containerfile $(IMAGE_BUILD_ARGS) --target operator \
		-t $(OPERATOR_IMAGE):$(VERSION) .
	$(CONTAINER_TOOL) build -f Containerfile $(IMAGE_BUILD_ARGS) --target agent \
		-t $(AGENT_IMAGE):$(VERSION) .

.PHONY: helm-lint
helm-lint: venv ## lint and render the Helm chart in both install modes
	$(HELM) lint --strict helm/vauban --kube-version $(HELM_KUBE_VERSION)
	$(HELM) lint --strict helm/vauban --kube-version $(HELM_KUBE_VERSION) \
		--set 'watchNamespaces={tenant-a,tenant-b}' --set metrics.serviceMonitor.enabled=true \
		--set prometheusRule.enabled=true --set dashboard.enabled=true
	$(HELM) template vauban helm/vauban --kube-version $(HELM_KUBE_VERSION) --include-crds >/dev/null

RELEASE_DIR ?= dist
RELEASE_NAMESPACE ?= vauban-system
# CycloneDX SBOMs of the operator and agent images, as this machine builds them (the real
# node's image builder, cached; mmdebstrap needed the first time). 0: chart and manifests only.
RELEASE_SBOM ?= 1

.PHONY: release
release: venv ## the packaged chart, plain manifests (CRDs, RBAC, Deployment...) and SBOMs in dist/
	rm -rf $(RELEASE_DIR) && mkdir -p $(RELEASE_DIR)
	$(HELM) lint --strict helm/vauban --kube-version $(HELM_KUBE_VERSION)
	$(HELM) package helm/vauban --destination $(RELEASE_DIR)
	# For users without Helm: the chart with its defaults, CRDs and namespace included, in
	# the order `kubectl apply --server-side -f` needs (the Namespace first).
	{ printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n' $(RELEASE_NAMESPACE); \
	  $(HELM) template vauban helm/vauban --namespace $(RELEASE_NAMESPACE) --include-crds \
	    --kube-version $(HELM_KUBE_VERSION); } > $(RELEASE_DIR)/vauban-$(VERSION).yaml
	if [ "$(RELEASE_SBOM)" = 1 ]; then $(BIN)/vauban dev sbom --output $(RELEASE_DIR); fi
	cd $(RELEASE_DIR) && sha256sum * > SHA256SUMS

.PHONY: kind-up
kind-up: ## create the kind cluster of kind-config.yaml, with CloudNativePG (needs Docker, kind)
	$(KIND) get clusters | grep -qx '$(KIND_CLUSTER)' \
		|| $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(KUBECTL) --context kind-$(KIND_CLUSTER) apply --server-side -f \
		https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/release-$(basename $(CLOUDNATIVEPG_VERSION))/releases/cnpg-$(CLOUDNATIVEPG_VERSION).yaml
	$(KUBECTL) --context kind-$(KIND_CLUSTER) -n cnpg-system rollout status \
		deployment/cnpg-controller-manager --timeout=300s

.PHONY: kind-deploy
kind-deploy: venv images ## build the images, load them into kind, install the chart there
	$(KIND) load docker-image --name $(KIND_CLUSTER) \
		$(OPERATOR_IMAGE):$(VERSION) $(AGENT_IMAGE):$(VERSION)
	$(KUBECTL) --context kind-$(KIND_CLUSTER) create namespace vauban-system \
		--dry-run=client -o yaml | $(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f -
	$(KUBECTL) --context kind-$(KIND_CLUSTER) label namespace vauban-system --overwrite \
		pod-security.kubernetes.io/enforce=restricted
	# Helm installs CRDs only on first install: apply them on every deploy.
	$(KUBECTL) --context kind-$(KIND_CLUSTER) apply --server-side -f helm/vauban/crds
	$(HELM) upgrade --install vauban helm/vauban --kube-context kind-$(KIND_CLUSTER) \
		--namespace vauban-system --wait --timeout 5m \
		--set image.repository=$(OPERATOR_IMAGE) --set image.tag=$(VERSION) \
		--set backupAgent.image.repository=$(AGENT_IMAGE) \
		--set backupAgent.image.tag=$(VERSION)

# -- Benchmarks (bench/README.md, docs/performance.md) -----------------------------------------

BENCH_STAMP := $(VENV)/.bench-$(shell sha1sum bench/requirements.txt | cut -c1-12)

$(BENCH_STAMP): bench/requirements.txt | $(STAMP)
	$(BIN)/pip install --quiet -r bench/requirements.txt
	rm -f $(VENV)/.bench-* && touch $@

.PHONY: bench
bench: binaries $(BENCH_STAMP) ## fleet benchmark: BENCH_SIZES, BENCH_REPEATS, BENCH_STEADY_SECONDS (long; not in `make test`)
	cd bench && ../$(BIN)/python fleet.py
