# carvana-unet: `make demo` runs the whole job on the embedded default, `make test` runs the tests.
# Both create the virtualenv they need in .venv from nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# A Kaggle-layout folder to use instead of the synthetic sample, e.g. CARVANA_DATA=../shared/carvana
CARVANA_DATA ?=
DEMO   ?= demo

.PHONY: venv test test-all lint demo clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# Also the slow tests (real-data training runs, long benchmarks).
test-all: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "slow or not slow"

demo: $(STAMP)
	CARVANA_DATA="$(CARVANA_DATA)" DEMO="$(DEMO)" PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/demo.sh

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache *.egg-info
