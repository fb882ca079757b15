# One command to set up and run the pipeline, one to run the tests. Everything runs offline.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PLOTS_TEMPLATE := $(VENV)/share/dvc-plots-offline.html
VEGA_PACKAGES := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
# dvc runs each stage's `python -m stages.<name>` with this PATH: the project's venv comes first.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

FULL_DIR ?= .full
# Extra pytest flags for the marked suites; CI sets --no-skips (tests/conftest.py): there, a skipped test
# (a missing package, service or data folder) fails the suite. A run in which no test passed always fails.
STRICT ?=

.PHONY: demo demo-full check setup test test-dag test-remote test-distributed test-slow test-gpu test-gpu-dag bench lint

# Set up (if needed) and run the DAG (the tour) on the embedded demo dataset; params are checked first.
demo: setup check
	$(BIN)/dvc repro
	@echo "Results table: $(CURDIR)/reports/results.md"

# The full comparison (every model, variant and feature set, full-size demo, longer budgets, three seeds;
# about an hour on 2 cores): the committed code in its own clone ($(FULL_DIR)/, kept between runs: its DVC
# cache and feature caches spare a second run the encoding, but the reset brings back the tour's locks, so the
# training stages run again) with profiles/full.yaml applied to params.yaml, then its report copied to
# reports/full/. Uncommitted changes are not part of it: commit first; let it finish (a stopped run leaves
# the tour's committed run files in $(FULL_DIR)/runs/ for the stages it had not reached).
demo-full: setup
	test -d $(FULL_DIR)/.git || git clone -q . $(FULL_DIR)
	git -C $(FULL_DIR) fetch -q origin HEAD && git -C $(FULL_DIR) reset -q --hard FETCH_HEAD
	cd $(FULL_DIR) && $(abspath $(BIN))/python -m profiles.apply full && $(abspath $(BIN))/python -m stages.check
	cd $(FULL_DIR) && $(abspath $(BIN))/dvc repro
	rm -rf reports/full.tmp && mkdir -p reports/full.tmp
	cp $(FULL_DIR)/reports/results.md $(FULL_DIR)/reports/results.csv $(FULL_DIR)/reports/sequential.csv reports/full.tmp/
	cp -r $(FULL_DIR)/reports/plots reports/full.tmp/plots
	git -C $(FULL_DIR) rev-parse HEAD > reports/full.tmp/COMMIT
	rm -rf reports/full && mv reports/full.tmp reports/full
	@echo "Full results table: $(CURDIR)/reports/full/results.md (from commit $$(cat reports/full/COMMIT))"

# params.yaml against the code's declarations, as the DAG's `check` stage does, but before DVC parses the
# dvc.yaml files: a string where a list belongs (`pipeline.id_models: bpr`) stops DVC itself with
# "'Value' object is not iterable", and this names the key instead.
check: setup
	$(BIN)/python -m stages.check

# The virtual environment, rebuilt when pyproject.toml changes. torch==2.13.0 first: that pin takes the
# CPU build from this machine's disk instead of a multi-GB CUDA build.
setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# `dvc plots show` writes HTML that loads vega from a CDN. For offline viewing, this template inlines
# vega, vega-lite and vega-embed (the versions dvc-render uses), fetched once from the npm registry, and
# is set as this clone's plots.html_template (.dvc/config.local, not committed).
$(PLOTS_TEMPLATE): $(VENV)/.installed
	rm -rf $(VENV)/share/vega && mkdir -p $(VENV)/share/vega
	cd $(VENV)/share/vega && npm pack --silent $(VEGA_PACKAGES) >/dev/null
	cd $(VENV)/share/vega && for t in *.tgz; do tar xzf $$t package/build; mv package/build/*.min.js .; rm -rf package; done
	{ printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<title>DVC Plot</title>\n'; \
	  for js in vega vega-lite vega-embed; do printf '<script>\n'; cat $(VENV)/share/vega/$$js.min.js; printf '\n</script>\n'; done; \
	  printf '</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'; } > $@.tmp
	mv $@.tmp $@
	$(BIN)/dvc config --local plots.html_template $(abspath $@)

# The default (fast) test suite; CI runs it first. Two workers, one test module each at a time (the
# end-to-end module shares one DVC project between its tests in order); the end-to-end module starts
# first on one worker (tests/conftest.py orders it first; xdist's reorder by test count is off).
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The slower DVC DAG tests (tests/test_pipeline_edits.py: LMM4Rec's stages, graph params, k-core with the
# persisted feature caches, push/pull into a clone, `dvc exp run -S`) on their own demo copy; CI runs them.
test-dag: setup
	$(BIN)/python -m pytest -q -m dag $(STRICT)

# The S3 remote scenarios (tests/test_remote_s3.py) against a moto server the tests start; CI runs them too.
test-remote: setup
	$(BIN)/python -m pytest -q -m remote $(STRICT)

# The distributed engines: feature extraction on a local Ray (2 actors) and training under torchrun with
# 2 processes (gloo); CI runs them too.
test-distributed: setup
	$(BIN)/python -m pytest -q -m distributed $(STRICT)

# The slow tests: the tour (the default DAG) from a fresh copy, twice (determinism, learning above chance, no-op
# repro), and two real text-only datasets through the DAG; CI runs them too.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(STRICT)

# The GPU check, the first thing to run on a machine with a GPU (none has been available to this project):
# the GPU-versus-CPU tests (every model, bfloat16, features, the evaluator, LMM4Rec end to end) and the tiny
# DAG, PMMRec included, with every device key on the GPU (tests/test_gpu_dag.py). Fails where torch sees no
# GPU (--no-skips). `MMPIPE_CHECK_DEVICE=cpu make test-gpu-dag` runs the DAG part on the CPU.
test-gpu: setup
	$(BIN)/python -m pytest -q --no-skips tests/test_devices.py tests/test_lmm4rec.py -k gpu
	$(BIN)/python -m pytest -q --no-skips -m gpu

test-gpu-dag: setup
	$(BIN)/python -m pytest -q --no-skips -m gpu

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
