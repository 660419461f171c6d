# tinyserve: `make serve` and `make test` set everything up on first use (a .venv in the repo).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.DEFAULT_GOAL := help
.PHONY: help serve test test-fast test-gpu lint format train bench bench-peers peers fuzz soak attack clean system-deps lock image image-cuda kserve-client

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving and its clients (the batch scorer, Triton's client): no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,client,triton]'
	@touch $@

# Everything: serving, clients (with Ray), training (torch==2.13.0 from local disk), and the dev tools.
$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,client,triton,ray,train,dev,signing]'
	@touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## serve the models of models/ on http://$(HOST):$(PORT)
	$(BIN)/bentoml serve --host $(HOST) --port $(PORT)

# System packages that the tests drive for real, installed with apt-get when missing (as root, as CI runs).
# podman runs the image in the tests, with runc: crun refuses hosts whose cgroups are half v1, half v2.
# bubblewrap: the service on a read-only root file system, as deploy/kubernetes/ runs it. (The tests also
# need kubectl, v1.27+ for its kustomize: this machine image ships it; Debian's is too old.)
APT_PACKAGES := chromium buildah podman runc debootstrap fonts-dejavu-core fonts-dejavu-extra fontconfig bubblewrap

system-deps:  ## install the system packages the tests use (apt-get, as root), when missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make system-deps: missing $$missing; run it as root (apt-get)" >&2; exit 2; fi; \
	  echo "installing system packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# onnxruntime's GPU build, without its CUDA libraries, in a folder of its own (both wheels install the
# package `onnxruntime`): tests/test_cuda_build.py serves on it to check the CUDA start-up probe on a
# machine without a GPU. About 255 MB, downloaded once per clone.
ORT_GPU := $(VENV)/onnxruntime-gpu
$(ORT_GPU)/.installed: | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps --target $(ORT_GPU) onnxruntime-gpu==1.31.1
	@touch $@

# checkov (security checks of deploy/kubernetes/, in tests/test_kubernetes.py) in a virtualenv of its own: it
# pins packaging, networkx and python-dateutil below the versions serving, Ray and training use.
CHECKOV_VENV ?= .venv-checkov
# (defined before `test`: make expands a rule's prerequisites where it reads the rule)
KSERVE_VENV ?= $(VENV)-kserve
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	@touch $@

# axe-core for the playground's accessibility tests, from npm at the version of tests/ui/package-lock.json.
AXE := tests/ui/node_modules/axe-core/axe.min.js
$(AXE): tests/ui/package.json tests/ui/package-lock.json
	@command -v npm >/dev/null || { echo "make test: npm is missing (Node.js 18+ with npm installs axe-core)" >&2; exit 2; }
	npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error
	@touch $@

test: $(VENV)/.all $(ORT_GPU)/.installed $(CHECKOV_VENV)/.installed $(KSERVE_VENV)/.installed system-deps $(AXE) lint  ## install everything, lint, run both tiers (in process, then real processes)
	$(BIN)/pytest -m "not process"
	$(BIN)/pytest -m "process and not gpu"

# KServe's Python SDK, for its InferenceGRPCClient against our gRPC port (tests/test_grpc.py runs it at test
# time): a virtualenv of its own, as kserve caps protobuf below 7 and psutil below 6, under our pins.
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet kserve==0.21.0
	@touch $@

kserve-client: $(KSERVE_VENV)/.installed  ## KServe's client in a virtualenv of its own (.venv-kserve), for the gRPC tests

test-fast: $(VENV)/.all  ## the in-process tier alone: every route, error, contract and V2 case on the real ASGI app (seconds)
	$(BIN)/pytest -m "not process"

# The GPU checks get a virtualenv of their own: onnxruntime-gpu with the CUDA 13 and cuDNN 9 libraries as
# wheels (~2 GB) in place of onnxruntime (both install the package `onnxruntime`).
GPU_VENV ?= $(VENV)-gpu
$(GPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --quiet -e '.[serve,client,dev]' scikit-learn==1.9.1
	$(GPU_VENV)/bin/pip uninstall --quiet --yes onnxruntime
	$(GPU_VENV)/bin/pip install --quiet 'onnxruntime-gpu[cuda,cudnn]==1.31.1'
	@touch $@

test-gpu: $(GPU_VENV)/.installed  ## on an NVIDIA GPU machine: all models on CUDA from the wheels, checked; GPU figures
	$(GPU_VENV)/bin/pytest -m gpu tests/test_gpu.py
	$(GPU_VENV)/bin/pytest tests/test_v2.py tests/test_service_predict.py  # provider-aware: auto serves on CUDA here
	$(GPU_VENV)/bin/python -m benchmarks.gpu

lint: $(VENV)/.all  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.all  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: $(VENV)/.all  ## retrain and re-export all four models into models/
	$(BIN)/python -m training

bench: $(VENV)/.all peers  ## measure serving and its scaling over worker/thread shapes, then against the frameworks (bench-peers)
	$(BIN)/python -m benchmarks $(ARGS)
	$(BIN)/python -m benchmarks.overhead --layers
	$(BIN)/python -m benchmarks.peers $(ARGS)
	$(BIN)/python -m benchmarks.roll  # requests/s and p99 while versions are loaded and unloaded, against none

# The frameworks tinyserve is measured against, each from benchmarks/peers/NAME/requirements.txt (every
# package pinned: a `pip freeze` of what requirements.in, the framework and onnxruntime, installed)
# in a virtualenv of its own, .venv-peers/NAME: their pins clash with each other and with tinyserve's.
PEERS      := fastapi litserve mlserver kserve ray_serve bentoml
PEER_VENVS ?= .venv-peers
$(PEER_VENVS)/%/.installed: benchmarks/peers/%/requirements.txt
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/pip install --quiet -r $<
	@touch $@

peers: $(foreach p,$(PEERS),$(PEER_VENVS)/$(p)/.installed)  ## install the frameworks of bench-peers into .venv-peers/ (~2 GB)

bench-peers: $(VENV)/.all peers  ## tinyserve against FastAPI, LitServe, MLServer, KServe, Ray Serve, BentoML and BentoML's floors (3 rounds, ~17 min)
	$(BIN)/python -m benchmarks.peers $(ARGS)

fuzz: $(VENV)/.all  ## the long fuzz run: schemathesis and the V2 fuzzer, 400 cases per route (>= 2,800 in all)
	TINYSERVE_FUZZ_EXAMPLES=400 $(BIN)/pytest tests/test_hardening.py -k "contract or framings" -p no:cacheprovider

# Against a server already running (make serve, a container, a pod behind kubectl port-forward).
URL ?= http://$(HOST):$(PORT)
attack: $(VENV)/.all  ## replay issue 21's attacks on the server at URL= (TOKEN=, METRICS_TOKEN=, PID=) and print a table
	$(BIN)/python -m benchmarks.attack --url $(URL) $(if $(TOKEN),--token $(TOKEN)) \
	  $(if $(METRICS_TOKEN),--metrics-token $(METRICS_TOKEN)) $(if $(PID),--pid $(PID))

soak: $(VENV)/.all  ## 30 minutes of mixed traffic at 40 requests/s: statuses, latency over time, server memory
	$(BIN)/python -m benchmarks.soak --minutes 30

# The images: the wheels of the lock, `bentoml build`, `bentoml containerize` with Docker, Podman or Buildah,
# whichever is here (CONTAINER_ENGINE= picks one); IMAGE= names the image (default: the bento's tag).
image: $(VENV)/.serve  ## build the CPU image (bento + container) and print its name and size
	PATH="$(abspath $(BIN)):$$PATH" deploy/image/build.sh cpu

image-cuda: $(VENV)/.serve  ## build the CUDA image (onnxruntime-gpu with its CUDA and cuDNN wheels)
	PATH="$(abspath $(BIN)):$$PATH" deploy/image/build.sh cuda

# Every package of the images at one version, with hashes, for Linux x86_64 and CPython 3.11 (the base image's).
LOCK := $(BIN)/uv pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--generate-hashes --custom-compile-command "make lock"
lock: $(VENV)/.all  ## lock requirements/serve*.txt into requirements/*.lock.txt (ARGS=--upgrade: newest versions)
	$(LOCK) $(ARGS) requirements/serve.txt -o requirements/serve.lock.txt
	$(LOCK) $(ARGS) requirements/serve-cuda.txt -o requirements/serve-cuda.lock.txt

clean:  ## remove the virtual environment, caches and build/ (wheelhouses, temporary build contexts)
	rm -rf $(VENV) $(GPU_VENV) $(PEER_VENVS) $(CHECKOV_VENV) $(KSERVE_VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
