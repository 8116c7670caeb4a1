# The two commands of the contract: `make demo` and `make test`. Both set up .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast bench dev clean postgres-bin

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: this version resolves to the machine's local CPU wheel (no CUDA download)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/longvila demo

# PostgreSQL server binaries for the scale tests' throwaway server (Debian's package; see longvila/pgserver.py)
postgres-bin:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

test: setup postgres-bin
	$(PY) -m pytest -q

test-fast: setup postgres-bin
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/shots.py
	$(PY) bench/frames.py
	$(PY) bench/mmsp.py
	$(PY) bench/captions.py
	$(PY) bench/train.py
	$(PY) bench/scale.py
	$(PY) bench/faults.py
	$(PY) bench/long_context.py
	$(PY) bench/curriculum.py

dev: setup
	$(VENV)/bin/longvila dev

clean:
	rm -rf data .dagster runs bench/out
