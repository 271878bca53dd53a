# Afterglow: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE ?= copy
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n",$$1,$$2}'

.PHONY: uv
# A distribution's python3 refuses `pip install --user` (PEP 668, externally managed):
# then retry with --break-system-packages (a --user install touches no system file),
# and failing that install into a private venv and link uv into ~/.local/bin.
uv: ## install uv when it is missing (through pip)
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || \
	  python3 -m pip install --user --quiet uv 2>/dev/null || \
	  python3 -m pip install --user --quiet --break-system-packages uv 2>/dev/null || \
	  { python3 -m venv "$(HOME)/.local/share/afterglow-uv" && \
	    "$(HOME)/.local/share/afterglow-uv/bin/pip" install --quiet uv && \
	    mkdir -p "$(HOME)/.local/bin" && \
	    ln -sf "$(HOME)/.local/share/afterglow-uv/bin/uv" "$(HOME)/.local/bin/uv"; }

.PHONY: install
install: uv ## install every package of the workspace from the lock
	@$(UV) sync --all-packages --locked

.PHONY: dev
dev: install ## start PostgreSQL, the broker and every service; Ctrl-C stops all
	@$(UV) run afterglow-stack up

.PHONY: demo
demo: install ## a shop, five customers, every service: prints messages and journeys (< 2 min)
	@$(UV) run python -m afterglow.devstack.demo

.PHONY: test
test: install ## the whole suite on the embedded stack (PostgreSQL + Tansu); e2e in its own run
	@$(UV) run python -m afterglow.devstack.suite $(PYTEST_ARGS)

.PHONY: test-kafka
test-kafka: install ## the broker-facing suite against Apache Kafka (KRaft) from Maven Central
	@$(UV) run python -m afterglow.devstack.kafka_suite $(PYTEST_ARGS)

.PHONY: test-faults
test-faults: install ## kill -9, PostgreSQL down 15 s and 60 s, Kafka down 30 s, a rebalance storm, no connection slots, poison, the clock a week ahead; nothing lost or doubled (~12 min; FAULTS="kill,clock" runs the faults whose names hold one of those words; CI runs one of each kind)
	@AFTERGLOW_FAULTS=1 $(UV) run pytest tests/reliability -p no:cacheprovider -s -q $(PYTEST_ARGS)

.PHONY: soak
soak: install ## an hour at 5 orders/s on every service: memory, sessions, notify queue, table sizes at start and end; nothing lost (SOAK_MINUTES, SOAK_RATE)
	@AFTERGLOW_SOAK=1 $(UV) run pytest tests/reliability/test_soak.py -p no:cacheprovider -s -q $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff (lint and format check), mypy and the import contracts (.importlinter)
	@$(UV) run ruff check .
	@$(UV) run ruff format --check .
	@$(UV) run mypy libs/*/src services/*/src
	@$(UV) run lint-imports --no-cache

.PHONY: fmt
fmt: install ## format and fix what ruff can
	@$(UV) run ruff format .
	@$(UV) run ruff check --fix .

.PHONY: docs
docs: install ## JSON Schema per event type and the AsyncAPI document into docs/
	@$(UV) run python -m afterglow.events.docs docs

.PHONY: deploy-check
deploy-check: install ## render and validate deploy/ offline (kustomize, schemas, CRDs, hadolint)
	@$(UV) run python deploy/check.py

.PHONY: bench
bench: install ## benchmarks that print figures (see bench/README.md)
	@for b in bench/*/run.py; do echo "== $$b"; $(UV) run --group bench python $$b || exit 1; done
