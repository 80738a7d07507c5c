# dsbprep: the two set-up commands are `make dataset` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned: this version installs a CPU build from the local wheel cache; a bare
# `torch` requirement would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: dataset test test-quick lint bench install clean help

help:
	@echo "make dataset  - create .venv, install dsbprep, build the dataset from config.ini"
	@echo "make test     - create/update .venv with test extras and run the whole suite"
	@echo "make lint     - ruff"
	@echo "make bench    - run the benchmarks in benchmarks/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[test,dask]' '$(TORCH_PIN)' 'keras>=3'
	# nnU-Net v2's dataset check only: --no-deps keeps the pinned CPU torch (see setup.cfg)
	$(PIP) install -q --no-deps 'nnunetv2==2.8.1' 'batchgenerators==0.25.5' 'acvl_utils==0.2.6'
	touch $@

install: $(VENV)/.installed

dataset: $(VENV)/.installed
	$(PY) -m dsbprep.build

test: $(VENV)/.installed-test
	$(PY) -m pytest

test-quick: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check dsbprep tests benchmarks

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_load.py
	$(PY) benchmarks/bench_segment.py
	$(PY) benchmarks/bench_build.py
	$(PY) benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) data/dsbprep.h5 data/build_report.json
