# Quick start: `make run`, then `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The result of `make run`; override for another pair: make run CONTENT=... STYLE=...
CONTENT ?= examples/images/coffee.png
STYLE ?= examples/images/starry_night.jpg
RUN_ARGS ?= --iterations 300 --height 192 --width 256

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p out
	$(VENV)/bin/nst stylize $(CONTENT) $(STYLE) -o out/result.png --snapshots out/snapshots $(RUN_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
