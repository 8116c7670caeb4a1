# The two commands of the contract: `make demo` and `make test`. Both set up .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export PYTHONUNBUFFERED := 1

.PHONY: setup system-packages demo test test-fast bench dev clean

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

# Debian packages the tests use: Chromium and its chromedriver (browser tests, tests/orchestration/test_browser.py)
# and PostgreSQL's server binaries (the scale tests' throwaway server, longvila/pgserver.py). Installed with apt,
# non-interactively, when missing (as root, or through passwordless sudo); where apt is not usable this says so
# loudly and the tests that need them skip.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  missing="$$missing chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then \
		echo "system packages present: chromium, chromedriver, postgresql"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then \
		sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "############################################################################################"; \
		echo "# WARNING: missing Debian packages:$$missing; apt-get is not usable here (not root,"; \
		echo "# no sudo, or no apt): the browser / PostgreSQL tests that need them will be SKIPPED."; \
		echo "############################################################################################"; \
	fi

test: setup system-packages
	$(PY) -m pytest -q

test-fast: setup system-packages
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/shots.py
	$(PY) bench/frames.py
	$(PY) bench/mmsp.py
	$(PY) bench/captions.py
	$(PY) bench/train.py
	$(PY) bench/orchestration.py
	$(PY) bench/scale.py
	$(PY) bench/faults.py
	$(PY) bench/long_context.py
	$(PY) bench/curriculum.py

dev: setup
	$(VENV)/bin/longvila dev

clean:
	rm -rf data .dagster runs bench/out
