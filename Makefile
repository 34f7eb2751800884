# Every target bootstraps its own .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.built

# Compiled code (setup.py, all optional): the strategies' C extensions, and the request path's modules
# that have a .pxd, compiled by Cython from their plain Python source. A built module shadows its .py, so
# every target that runs code rebuilds first when a source changed (tests/conftest.py refuses stale ones).
HOT_PATH := src/steelyard/proxy/http src/steelyard/proxy/pool src/steelyard/proxy/server src/steelyard/proxy/sockets \
	src/steelyard/proxy/tcp \
	src/steelyard/runtime/upstream
COMPILED_SOURCES := $(wildcard src/steelyard/strategies/*.c) $(addsuffix .py,$(HOT_PATH)) $(addsuffix .pxd,$(HOT_PATH))

.PHONY: demo test bench lint venv clean install deploy compiled pure

# llhttp's C sources for proxy/http (from the pinned httptools release: tools/fetch_llhttp.py), fetched
# before the install builds anything. Without them (no network) the request path runs as plain Python,
# which setup.py says, and tests/test_build.py then fails on.
LLHTTP := build/llhttp/VERSION

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python tools/fetch_llhttp.py || true
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $(BUILT)

$(LLHTTP): $(STAMP)
	$(BIN)/python tools/fetch_llhttp.py || true

$(BUILT): $(STAMP) $(LLHTTP) $(COMPILED_SOURCES)
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(BUILT)

venv: $(BUILT)
compiled: $(BUILT)

demo: $(BUILT)
	$(BIN)/steelyard demo

# The suite runs on the compiled build; then the request path's tests again on its plain Python (a copy
# of the package without the compiled request path), which is what runs where nothing could compile.
test: $(BUILT)
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 -q
	rm -rf build/pure && mkdir -p build/pure && cp -r src/steelyard build/pure/
	rm -f $(foreach m,$(HOT_PATH),build/pure/$(patsubst src/%,%,$(m)).*.so)
	STEELYARD_EXPECT_PURE=1 PYTHONPATH=build/pure $(BIN)/pytest -n 2 -q -p no:cacheprovider \
		tests/test_proxy_*.py tests/test_upstream.py

bench: $(BUILT)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy --strict src/steelyard/model src/steelyard/config src/steelyard/strategies src/steelyard/endpoints.py
	$(BIN)/lint-imports

clean: pure
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# `make pure` removes the request path's compiled modules (the strategies' C extensions stay); the next
# `make test` or `make demo` builds them again.
pure:
	rm -f $(foreach m,$(HOT_PATH),$(m).*.so $(m).c) $(BUILT)

# Kubernetes (kubectl's current context): `make install` applies the CRDs; `make deploy` applies deploy/
# and creates the admin token Secret when missing, `make deploy DIR=folder` a folder from `steelyard init`.
install:
	@command -v kubectl >/dev/null || { echo "make install: kubectl is not installed" >&2; exit 1; }
	@kubectl config current-context >/dev/null 2>&1 || { echo "make install: no cluster configured: kubectl has no current context (see 'kubectl config get-contexts')" >&2; exit 1; }
	kubectl apply -f deploy/crds/

deploy:
	@command -v kubectl >/dev/null || { echo "make deploy: kubectl is not installed" >&2; exit 1; }
	@kubectl config current-context >/dev/null 2>&1 || { echo "make deploy: no cluster configured: kubectl has no current context (see 'kubectl config get-contexts')" >&2; exit 1; }
	kubectl apply -k $(or $(DIR),deploy)
	@test -n "$(DIR)" || kubectl -n steelyard-system get secret steelyard-admin >/dev/null 2>&1 || \
		kubectl -n steelyard-system create secret generic steelyard-admin \
			--from-literal=token="$$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
