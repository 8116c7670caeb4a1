# The two commands of the contract: `make demo` and `make test`. Both set up .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export PYTHONUNBUFFERED := 1

.PHONY: setup browser demo test test-fast bench dev clean

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

# Debian's Chromium and chromedriver for the browser tests (tests/orchestration/test_browser.py). Installed with
# apt when missing; where apt is not usable (no root, no apt) this says so loudly and those tests skip.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium), chromedriver: $$(command -v chromedriver)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then \
		sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else \
		echo "############################################################################################"; \
		echo "# WARNING: chromium/chromedriver are missing and apt-get is not usable here (not root, no sudo"; \
		echo "# or no apt): the browser tests will be SKIPPED. Install Debian's chromium and chromium-driver."; \
		echo "############################################################################################"; \
	fi

test: setup browser
	$(PY) -m pytest -q

test-fast: setup browser
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/shots.py
	$(PY) bench/frames.py
	$(PY) bench/mmsp.py
	$(PY) bench/captions.py
	$(PY) bench/train.py
	$(PY) bench/orchestration.py

dev: setup
	$(VENV)/bin/longvila dev

clean:
	rm -rf data .dagster runs bench/out
