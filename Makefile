# tinyserve: `make serve` and `make test` set everything up on first use (a .venv in the repo).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.DEFAULT_GOAL := help
.PHONY: help serve test lint format train bench fuzz soak clean system-deps

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs only bentoml, onnxruntime, numpy and pydantic: no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	@touch $@

# Everything: serving, training (torch==2.13.0 from local disk), client (with Ray), and the dev tools.
$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,train,client,parquet,ray,dev]'
	@touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## serve the models of models/ on http://$(HOST):$(PORT)
	$(BIN)/bentoml serve --host $(HOST) --port $(PORT)

# System packages that the tests drive for real, installed with apt-get when missing (as root, as CI runs).
# bubblewrap: the service on a read-only root file system, as deploy/kubernetes/ runs it. (The tests also
# need kubectl, v1.27+ for its kustomize; this machine image ships it: Debian's is too old.)
APT_PACKAGES := chromium buildah debootstrap fonts-dejavu-core bubblewrap

system-deps:  ## install the system packages the tests use (apt-get, as root), when missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make system-deps: missing $$missing; run it as root (apt-get)" >&2; exit 2; fi; \
	  echo "installing system packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: $(VENV)/.all system-deps lint  ## install everything, lint, run the whole test suite
	$(BIN)/pytest

lint: $(VENV)/.all  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.all  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: $(VENV)/.all  ## retrain and re-export all four models into models/
	$(BIN)/python -m training

bench: $(VENV)/.all  ## measure serving against raw ONNX Runtime and a FastAPI peer (~2 min; not in make test)
	$(BIN)/python -m benchmarks $(ARGS)

fuzz: $(VENV)/.all  ## the long fuzz run: schemathesis and the V2 fuzzer, 400 cases per route (>= 2,800 in all)
	TINYSERVE_FUZZ_EXAMPLES=400 $(BIN)/pytest tests/test_hardening.py -k "contract or framings" -p no:cacheprovider

soak: $(VENV)/.all  ## 30 minutes of mixed traffic at 40 requests/s: statuses, latency over time, server memory
	$(BIN)/python -m benchmarks.soak --minutes 30

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
