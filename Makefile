# One-command setup, run and test. `make env` is idempotent: it rebuilds .venv only when
# requirements.lock or the fairseq patch script changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= $(shell nproc)

.PHONY: env run test lint clean-env

env: $(STAMP)

$(STAMP): requirements.lock pipeline/build_fairseq.py
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	# torch first, exactly 2.13.0: any looser request may pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) pipeline/build_fairseq.py --out $(VENV)/wheels
	$(PY) -m pip install -q -c requirements.lock -r requirements.lock $(VENV)/wheels/fairseq-*.whl
	$(PY) -m pip check
	touch $(STAMP)

run: env
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES) all

test: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

clean-env:
	rm -rf $(VENV)
