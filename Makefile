# Two commands do all the set-up: `make test` and `make reproduce` (see README.md).
# Both create .venv if missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# How to install torch (CI passes a spec that matches its local wheel, e.g. torch==2.13.0).
TORCH_SPEC ?= torch
# Data root: $EECS598_DATA if set, else ../shared/data when present, else the package default.
EECS598_DATA ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export EECS598_DATA
QUICK ?=
ONLY ?=

.PHONY: venv test test-unit test-notebooks reproduce student bench clean-notebooks

$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || { $(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q torch; }
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

## The whole suite: unit tests, then every notebook executed with nbval in quick mode.
test: venv
	EECS598_QUICK=1 $(PY) -m pytest tests -q
	EECS598_QUICK=1 $(PY) -m pytest --nbval-lax --nbval-current-env -q -p no:cacheprovider A*/*.ipynb

test-unit: venv
	$(PY) -m pytest tests -q

## Headline results -> results/results.json + results/RESULTS.md (QUICK=1 for a smoke run).
reproduce: venv
	$(PY) -m eecs598.reproduce $(if $(filter-out 0 false no off,$(QUICK)),--quick) $(if $(ONLY),--only $(ONLY))

## Stubbed student copy in build/student (solutions removed); UPTO=A2 releases A1-A2 only.
UPTO ?=
student: venv
	$(PY) tools/make_student.py --out build/student $(if $(UPTO),--upto $(UPTO))

bench: venv
	$(PY) benchmarks/run_all.py
