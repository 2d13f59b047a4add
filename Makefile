# MedMod engine — every target sets itself up first (`make setup` is idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data
PATIENTS ?= 2000
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: setup jars test test-fast lint format demo synth clean

setup: $(STAMP) jars

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

jars: $(STAMP)
	@$(PY) -m spark_jobs.jars fetch >/dev/null

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

synth: setup
	$(PY) -m spark_jobs.synth_mimic --out $(DATA)/synth --patients $(PATIENTS) --seed $(SEED)

demo: synth

clean:
	rm -rf $(DATA) runs spark-warehouse .pytest_cache
