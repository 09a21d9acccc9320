# kaiser_edu: an interactive course on x86-64 paging and kernel page-table isolation.
#
#   make lab     create .venv if needed, then open the course in JupyterLab
#   make test    create .venv if needed, then run every check (what CI runs)
#   make bench   measure the simulator (kaiser-edu bench)
#   make lint    ruff only (likewise make pytest, make notebooks, make browser, make pip-path:
#                one step each)
#   make clean   remove caches and build output (keeps .venv)
#
# The environment is a plain venv made with the machine's python3, with the package
# installed editable with its test extras. A stamp file records that it is done, so later
# runs start at once; editing pyproject.toml reinstalls.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kaiser-edu-installed

# numba's on-disk cache of compiled kernels: in the repo unless the caller chose one
# (CI gives every run a fresh one: a truncated cache file raises EOFError, numba #10434).
NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export NUMBA_CACHE_DIR

PYTEST := $(BIN)/pytest
LINT_PATHS := kaiser_edu $(wildcard tests)

# Options for JupyterLab (`make lab LAB_ARGS="--port=9999 --no-browser"`).
LAB_ARGS ?=
BENCH_ARGS ?=

# The folders whose notebooks nbval runs, less those without any notebook (nbval would
# collect nothing there; an empty or missing folder is not an error).
NB_FOLDERS := notebooks solutions exercises
NB_DIRS := $(strip $(foreach d,$(NB_FOLDERS),$(if $(shell find $(d) -name '*.ipynb' \
             -not -path '*/.ipynb_checkpoints/*' -print -quit 2>/dev/null),$(d))))
NBVAL_OPTS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
              --nbval-cell-timeout=300
LESSONS := $(wildcard notebooks/*.ipynb)

.PHONY: help venv lab test lint pytest notebooks browser property-nojit property-boundscheck \
        bench clean pip-path

help:
	@sed -n '3,9s/^# //p' $(firstword $(MAKEFILE_LIST))

# --- the environment ----------------------------------------------------------------------

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "kaiser_edu needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	          "Run e.g. make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  echo "== creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	  $(PYTHON) -m venv --clear $(VENV); \
	fi
	@echo "== installing kaiser_edu and its test tools into $(VENV)"
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	@touch $@

# --- using it -----------------------------------------------------------------------------

# kaiser-edu lab: JupyterLab on this venv's Python, the whole course as its root (so
# notebooks/, exercises/, ... are all browsable), lesson 00 open (--allow-root as root).
lab: $(STAMP)
	$(BIN)/kaiser-edu lab --dir '$(CURDIR)' $(if $(strip $(LAB_ARGS)),-- $(LAB_ARGS))

bench: $(STAMP)
	$(BIN)/kaiser-edu bench $(BENCH_ARGS)

# --- checks -------------------------------------------------------------------------------

# Everything, in order: lint; the pytest suite (testpaths in pyproject.toml: tests/ and the
# doctests in kaiser_edu/; no notebooks, and without the browser tests); nbval over every
# notebook; the real-browser test of each lesson; then the property tests again with
# numba's JIT off (the kernels run as plain Python, so Python's own checks apply) and with
# bounds checking on. Those two reruns use fewer hypothesis examples and their own numba
# caches: numba does not key its cache on NUMBA_BOUNDSCHECK, so a shared cache would hand
# back kernels compiled without checks.
test: lint pytest notebooks browser property-nojit property-boundscheck pip-path
	@echo "== make test: all checks passed"

lint: $(STAMP)
	@echo "== ruff check $(LINT_PATHS)"
	$(BIN)/ruff check $(LINT_PATHS)

# pytest collects notebooks only when given --nbval (the next step), so this run has none.
pytest: $(STAMP)
	@echo "== pytest: tests/ and the doctests (browser tests: make browser)"
	$(PYTEST) -m 'not browser'

# Each notebook runs in a fresh kernel of this environment and every cell's output is
# compared with the committed one (tests/nbval_sanitize.cfg: what may differ). That the
# committed notebooks are executed, so that there is something to compare, is checked by
# tests/test_notebooks_executed.py in the step above.
notebooks: $(STAMP)
ifeq ($(strip $(NB_DIRS)),)
	@echo "== nbval: no notebooks in $(NB_FOLDERS): nothing to run"
else
	@echo "== nbval: every notebook in $(NB_DIRS)"
	$(PYTEST) $(NBVAL_OPTS) --durations=5 $(NB_DIRS)
endif

# Each lesson opened in JupyterLab in headless Chromium (Debian's /usr/bin/chromium):
# run all cells, no error anywhere, one widget operated and its view seen to change.
# Screenshots and the server's log: test-artifacts/browser/. Without chromium the test
# is skipped with a message (with CI=true it fails instead). -s shows one line per lesson:
# its cells, the widget operated and how long opening, Run All and the widget took.
browser: $(STAMP)
ifeq ($(strip $(LESSONS)),)
	@echo "== browser test: no lesson in notebooks/ yet: nothing to run"
else
	@echo "== browser test: $(words $(LESSONS)) lessons in JupyterLab in headless Chromium"
	$(PYTEST) -m browser -s --durations=0 tests/test_browser.py
endif

# Skipped, with a warning, while no test is marked `property` (pytest would exit 5).
define run_property_tests
	@echo "== property tests again with $(1)"
	@export $(1) NUMBA_CACHE_DIR='$(NUMBA_CACHE_DIR)/$(2)' KAISER_HYPOTHESIS_PROFILE=quick; \
	if [ "$$($(PYTEST) -q -m property --collect-only tests >/dev/null 2>&1; echo $$?)" = 5 ]; \
	then echo "WARNING: no property tests to run"; \
	else $(PYTEST) -m property tests; fi
endef

property-nojit: $(STAMP)
	$(call run_property_tests,NUMBA_DISABLE_JIT=1,nojit)

property-boundscheck: $(STAMP)
	$(call run_property_tests,NUMBA_BOUNDSCHECK=1,boundscheck)

# The pip path, as a student on a JupyterHub takes it (.ci/pip_path.py): build the sdist and
# the wheel from it, install the wheel non-editable into a fresh venv outside the checkout,
# `kaiser-edu lab --dir TMP --prepare-only`, JupyterLab serving the tour (timed from the
# start of pip install), nbval on one lesson and one lab of the copy, `kaiser-edu check` on
# the copied exercise and solution; then binder/postBuild and a session through binder/start
# in that venv. It prints each step's wall and CPU time (about 100 s of CPU in all; the wall
# time depends on the machine's load). KEEP=1 keeps the temporary folder.
pip-path: $(STAMP)
	PYTHON='$(PYTHON)' $(BIN)/python .ci/pip_path.py

# --- housekeeping -------------------------------------------------------------------------

clean:
	rm -rf .numba_cache .pytest_cache .hypothesis .ruff_cache test-artifacts build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \
	  -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o \( -name '*.nbi' -o -name '*.nbc' \) -type f -exec rm -f {} +
