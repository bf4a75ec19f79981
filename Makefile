# rayrelay — every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv quickstart test test-fast test-cluster faults lint crds chart prometheus litert bench images e2e clean

help:
	@echo "make quickstart   train, deploy and query the quickstart model locally"
	@echo "make test         lint, CRD and chart drift checks, and the whole test suite"
	@echo "make test-cluster only the real-API-server layer (tests/cluster, hack/envtest.sh)"
	@echo "make faults       every injected-fault case (the long ones too), then docs/reliability.md"
	@echo "make litert       the LiteRT converter and edge environments (.venv/litert, .venv/litert-edge)"
	@echo "make lint | crds | chart | bench | images | e2e"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[operator,workloads,dev]'
	$(BIN)/python hack/install_tools.py $(BIN)
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

# prometheus and promtool (Debian's package, pinned; cached) for the monitoring tests; where
# they cannot be had it says why and those tests skip with that reason.
prometheus: $(STAMP)
	$(BIN)/python hack/install_prometheus.py $(BIN)

# The LiteRT converter (litert-torch, pinned in hack/litert-requirements.txt; its pydantic pin
# conflicts with the project's) in an overlay venv on .venv, and the edge environment that
# `rayrelay edge-check` is tested in (hack/edge-requirements.txt); cached, rebuilt only when a
# pin or .venv's torch changes (docs/litert.md).
litert: $(STAMP)
	$(BIN)/python hack/litert_env.py
	$(BIN)/python hack/litert_env.py --edge

quickstart: $(STAMP)
	$(BIN)/rayrelay run -f examples/quickstart.yaml --once

lint: $(STAMP)
	$(BIN)/ruff check --no-cache core operator workloads tests bench hack
	$(BIN)/ruff format --no-cache --check core operator workloads tests bench hack
	$(BIN)/mypy core/rayrelay_core operator/rayrelay_operator workloads/rayrelay_workloads

crds: $(STAMP)
	$(BIN)/rayrelay crds

chart: $(STAMP)
	$(BIN)/python hack/sync_chart_crds.py

# tests/cluster runs on a real kube-apiserver + etcd (+ KubeRay's controller) whose
# binaries hack/envtest.sh finds or unpacks and prints (KUBEBUILDER_ASSETS); a corrupt
# archive stops the target here instead of skipping the layer.
test: $(STAMP) lint prometheus litert
	$(BIN)/rayrelay crds --check
	$(BIN)/python hack/sync_chart_crds.py --check
	assets=$$(hack/envtest.sh) && KUBEBUILDER_ASSETS="$$assets" PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/python -m pytest -q -ra --durations=25 --timeout=900 tests

test-fast: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -ra -m "not slow" tests/unit

test-cluster: $(STAMP) prometheus
	assets=$$(hack/envtest.sh) && KUBEBUILDER_ASSETS="$$assets" PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/python -m pytest -q -ra --timeout=900 tests/cluster

# The fault suite (tests/faults and the fault cases of the other layers): `make test` runs
# the fast cases; this runs all of them (RAYRELAY_FAULTS_LONG=1), records their figures in
# tests/faults/results/*.json (RAYRELAY_FAULTS_RECORD=1) and renders docs/reliability.md.
# A fault case is any test marked `faults` (all of tests/faults, and the cluster and unit
# tests that need those layers' fixtures).
faults: $(STAMP)
	assets=$$(hack/envtest.sh) && KUBEBUILDER_ASSETS="$$assets" PATH=$(CURDIR)/$(BIN):$$PATH \
	  RAYRELAY_FAULTS_LONG=1 RAYRELAY_FAULTS_RECORD=1 \
	  $(BIN)/python -m pytest -q -ra --timeout=3600 -m faults tests
	$(BIN)/python -m tests.faults.report

bench: $(STAMP) litert
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench $(BENCH_ARGS)

images:
	docker build -f operator/Dockerfile -t rayrelay-operator:dev .
	docker build -f workloads/Dockerfile -t rayrelay-workloads:dev .

e2e:
	hack/kind-e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
