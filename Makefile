# Every target bootstraps its own .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint venv clean install deploy compiled pure

$(STAMP): pyproject.toml setup.py $(wildcard src/steelyard/strategies/*.c)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/steelyard demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src/steelyard/model src/steelyard/config src/steelyard/strategies src/steelyard/endpoints.py
	$(BIN)/lint-imports

clean: pure
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# The compiled hot path (setup.py: the modules with a .pxd, Cython's pure Python mode), built in place.
# A built module shadows its .py: after editing one, run `make compiled` again (or `make pure`).
compiled: $(STAMP)
	$(BIN)/pip install -q 'Cython>=3.1'
	$(BIN)/python setup.py -q build_ext --inplace

HOT_PATH := src/steelyard/proxy/http src/steelyard/proxy/pool src/steelyard/proxy/server src/steelyard/runtime/upstream
pure:
	rm -f $(foreach m,$(HOT_PATH),$(m).*.so $(m).c)

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
