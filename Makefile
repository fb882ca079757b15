# One command to set up and run the pipeline, one to run the tests. Everything runs offline.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo setup test test-slow bench lint clean-outputs

# Set up (if needed) and run the whole DAG on the embedded demo dataset.
demo: setup
	$(BIN)/dvc repro
	@echo "Results table: $(CURDIR)/reports/results.md"

# The virtual environment, rebuilt when pyproject.toml changes. torch==2.13.0 first: that pin takes the
# CPU build from this machine's disk instead of a multi-GB CUDA build.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The default (fast) test suite; CI runs exactly this.
test: setup
	$(BIN)/python -m pytest -q

# The slow tests: the full default demo DAG from a fresh copy, twice (determinism and no-op repro).
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
