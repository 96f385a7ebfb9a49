# The one task runner: `make serve`, `make test`, and what CI calls.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.opsgate-installed

.PHONY: serve test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk (an unpinned torch pulls CUDA, GBs).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/opsgate serve

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy gateway

pytest: $(STAMP)
	$(BIN)/pytest -q -x --durations=15

test: lint typecheck pytest

bench: $(STAMP)
	bench/run.sh

clean:
	rm -rf $(VENV) .opsgate .mypy_cache .ruff_cache .pytest_cache
