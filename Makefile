# GPU workspaces for JupyterHub. `make` (or `make help`) lists the targets.
# Versions and image names: images/versions.env. Site settings: .env (.env.example).

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
# Subset for `make images`, e.g. make images IMAGES="notebook-cpu hub"
IMAGES ?=
# Extra arguments for pytest, e.g. make test ARGS="-k allocator -x"
ARGS ?=
# make down STOP_SERVERS=1 also stops the users' notebook containers
STOP_SERVERS ?= 0
# Extra arguments for scripts/bundle.sh
BUNDLE_ARGS ?=

.PHONY: help images up down logs test bench lint bundle

help: ## Show this help
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

images: ## Install/start Docker if needed, fill the wheelhouse with the host's pip, build missing or changed images (IMAGES="...")
	@scripts/install-docker.sh
	@scripts/build-images.sh $(IMAGES)

up: ## Build what is missing, start the hub, wait for it and print the URL (BUNDLE=dir: load it first)
	@GPUWS_BUNDLE="$(BUNDLE)" scripts/up.sh

bundle: ## Write every image the stack needs into one archive for offline hosts (make up BUNDLE=...)
	@scripts/bundle.sh $(BUNDLE_ARGS)

down: ## Stop the hub, keep all volumes (STOP_SERVERS=1 also stops user servers)
	@GPUWS_STOP_SERVERS=$(STOP_SERVERS) scripts/down.sh

logs: ## Follow the hub's log
	@scripts/compose.sh logs -f hub

test: ## Run the test suite (scripts/run-tests.sh; ARGS="..." go to pytest)
	bash scripts/run-tests.sh $(ARGS)

bench: ## Run the benchmarks on the tests' private engine into bench/results/ (~30 min; ARGS="--quick")
	PYTHON=$(CURDIR)/.venv/bin/python scripts/test-engine.sh $(CURDIR)/.venv/bin/python -m bench $(ARGS)

lint: ## The static checks make test runs first: ruff, ruff format, mypy --strict, shellcheck
	PATH="$(CURDIR)/.venv/bin:$$PATH" bash scripts/static-checks.sh
