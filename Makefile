# Renkei — the two commands: `make demo` (set up + run the demo end to end), `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESIDENTS ?= 20000
SEED ?= 7
AS_OF ?= 2025-06-01
DEMO := var/demo

.PHONY: demo test venv lint clean up down help

help:
	@echo "make demo   set up and run the demo end to end on embedded defaults (SQLite)"
	@echo "make up     Airflow UI on embedded defaults with the Renkei DAGs (after make demo); Ctrl-C / make down"
	@echo "make lint   audit the pinned dependencies (pip-audit; config/pip-audit-ignore.txt)"
	@echo "make test   run the tests (PostgreSQL/Redis tests skip when absent unless RENKEI_REQUIRE_SERVICES=1)"

# Browser assets no Python package ships (bootstrap-table for the GX Data Docs index, its dark
# theme): installed from their lock at setup, never fetched at run time (renkei/quality/datadocs.py).
OFFLINE_ASSETS := tools/offline-assets

$(STAMP): requirements.lock pyproject.toml $(OFFLINE_ASSETS)/package-lock.json
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# The lock is a complete freeze: install exactly its pins, then check them. (Resolving it
	@# again makes pip chase kombu's redis extra, which pins another packaging, back to kombu 3.)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/pip check
	@command -v npm >/dev/null || { echo "make venv: npm (Node.js) is needed for $(OFFLINE_ASSETS): apt-get install npm" >&2; exit 1; }
	npm ci --prefix $(OFFLINE_ASSETS) --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/renkei keys init --path $(DEMO)/keyring.json
	$(BIN)/renkei synth --residents $(RESIDENTS) --seed $(SEED) --as-of $(AS_OF) --out $(DEMO)/raw
	RENKEI_KEYRING=$(DEMO)/keyring.json $(BIN)/renkei run --raw $(DEMO)/raw --as-of $(AS_OF) --work $(DEMO)
	RENKEI_KEYRING=$(DEMO)/keyring.json $(BIN)/renkei deliver --work $(DEMO) --dry-run \
	  --out $(DEMO)/messages.jsonl --now $(AS_OF)T10:00:00+09:00

up: $(STAMP)
	@test -f $(DEMO)/warehouse.db || $(MAKE) demo
	RENKEI_KEYRING=$(DEMO)/keyring.json $(BIN)/python -m renkei.local_airflow --work $(DEMO)

down:
	@$(BIN)/python -m renkei.local_airflow --work $(DEMO) --down

# Dependency audit (tools/dep_audit.py): pip-audit on the pinned lock file; fails on any known
# vulnerability not listed with a reason in config/pip-audit-ignore.txt.
lint: $(STAMP)
	@$(BIN)/python tools/dep_audit.py --ignore-file config/pip-audit-ignore.txt --pip-audit $(BIN)/pip-audit

# Two test processes (pytest-xdist; one per core here): 11 min instead of 17. PYTEST_ARGS="-n 0" runs in one.
PYTEST_ARGS ?= -n auto

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache
