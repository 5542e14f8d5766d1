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

.PHONY: help images up down logs test bench lint lint-sh

help: ## Show this help
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

images: ## Install/start Docker if needed, build missing or changed images (IMAGES="...")
	@scripts/install-docker.sh
	@scripts/build-images.sh $(IMAGES)

up: ## Build what is missing, start the hub, wait for it and print the URL
	@scripts/up.sh

down: ## Stop the hub, keep all volumes (STOP_SERVERS=1 also stops user servers)
	@GPUWS_STOP_SERVERS=$(STOP_SERVERS) scripts/down.sh

logs: ## Follow the hub's log
	@scripts/compose.sh logs -f hub

test: ## Run the test suite (scripts/run-tests.sh; ARGS="..." go to pytest)
	bash scripts/run-tests.sh $(ARGS)

bench: ## Run the benchmarks into bench/results/ (~30 min; ARGS="--quick", ARGS="--only spawn")
	$(PYTHON) -m bench $(ARGS)

lint: ## Lint the Python code (ruff)
	ruff check .

lint-sh: ## Lint the shell scripts (shellcheck)
	shellcheck -x scripts/*.sh images/base/*.sh
