# Two commands do all the set-up: `make test` and `make reproduce` (see README.md).
# Both create .venv if missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# How to install torch (CI passes a spec that matches its local wheel, e.g. torch==2.13.0).
TORCH_SPEC ?= torch
# Optional pip constraints file (CI passes constraints.txt: the versions last tested). If pip
# cannot satisfy it, the install falls back to the newest releases within the ranges.
CONSTRAINTS ?=
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# Data root: $EECS598_DATA if set, else ../shared/data when present, else the package default.
EECS598_DATA ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export EECS598_DATA
QUICK ?=
ONLY ?=
RESULTS_DIR ?=

.PHONY: venv test test-unit test-notebooks reproduce student bench constraints

# What an install depends on beyond the files below: the constraints in use (their name and
# content). Recorded in $(VENV)/.install-id, which changes only when they do, so that e.g. a
# `make test CONSTRAINTS=constraints.txt` after a plain `make test` re-runs the install and pip
# moves the packages to the pinned versions. (Without constraints pip keeps what is installed
# if it is within range; TORCH_SPEC only matters when the venv has no torch.)
INSTALL_ID := constraints=$(CONSTRAINTS) $(if $(CONSTRAINTS),$(shell cksum < $(CONSTRAINTS)))

.PHONY: FORCE
$(VENV)/.install-id: FORCE
	@mkdir -p $(VENV)
	@echo '$(INSTALL_ID)' | cmp -s - $@ || echo '$(INSTALL_ID)' > $@

$(VENV)/.installed: pyproject.toml requirements.txt $(CONSTRAINTS) $(VENV)/.install-id
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(PIP_C) || $(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || { $(PY) -m pip install -q "$(TORCH_SPEC)" $(PIP_C) || { \
	  echo "warning: could not install $(TORCH_SPEC) $(PIP_C); installing the newest torch" >&2; \
	  $(PY) -m pip install -q torch; }; }
	$(PY) -m pip install -q -r requirements.txt $(PIP_C) || { \
	  echo "warning: could not install the versions in $(CONSTRAINTS); installing the newest within range" >&2; \
	  $(PY) -m pip install -q -r requirements.txt || { \
	  echo "warning: that failed too (offline?); trying without build isolation, with the venv's own setuptools" >&2; \
	  $(PY) -m pip install -q --no-build-isolation -r requirements.txt $(PIP_C); }; }
	touch $@

## Rewrite constraints.txt (its comment lines kept) from the venv, after a green `make test`.
constraints: venv
	{ grep '^#' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v -i -e '^torch=' -e '^py-spy' -e '^setuptools=' -e '^wheel='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

venv: $(VENV)/.installed

## The whole suite: unit tests, then every notebook executed with nbval in quick mode.
test: test-unit test-notebooks

test-unit: venv
	EECS598_QUICK=1 $(PY) -m pytest tests -q

test-notebooks: venv
	EECS598_QUICK=1 $(PY) -m pytest --nbval-lax --nbval-current-env -q -p no:cacheprovider A*/*.ipynb

## Headline results -> results/results.json + results/RESULTS.md (QUICK=1 for a smoke run).
reproduce: venv
	$(PY) -m eecs598.reproduce $(if $(filter-out 0 false no off,$(QUICK)),--quick) $(if $(ONLY),--only $(ONLY)) $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR))

## Stubbed student copy in build/student (solutions removed); UPTO=A2 releases A1-A2 only.
UPTO ?=
student: venv
	$(PY) tools/make_student.py --out build/student $(if $(UPTO),--upto $(UPTO))

bench: venv
	$(PY) benchmarks/run_all.py $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR))
