# The one task runner: `make serve`, `make test`, and what CI calls.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.opsgate-installed

.PHONY: serve test lint typecheck pytest browser compose bench clean
# One line, the same the HTML report test prints, for a machine where make cannot install chromium.
CHROMIUM_HINT := opsgate: the eval HTML report test needs Debian's chromium: run 'sudo apt-get install -y chromium'

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

# The eval HTML report test opens the report in Debian's chromium: install it with apt when it is
# missing and apt is usable (root, or sudo without a password), else say in one line what to run.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the eval HTML report test (apt-get)"; \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } \
	      || echo "$(CHROMIUM_HINT)"; \
	  else echo "$(CHROMIUM_HINT)"; fi; }

# The deployment manifest test validates deploy/compose.yaml with a compose client: Debian's
# docker-compose when neither `docker compose` nor `docker-compose` is there (same rules as above).
COMPOSE_HINT := opsgate: the compose manifest test needs a compose client: run 'sudo apt-get install -y docker-compose'
compose:
	@{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's docker-compose for the compose manifest test (apt-get)"; \
	    $$SUDO apt-get install -y -q docker-compose >/dev/null 2>&1 \
	      || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q docker-compose >/dev/null; } \
	      || echo "$(COMPOSE_HINT)"; \
	  else echo "$(COMPOSE_HINT)"; fi; }

pytest: $(STAMP) browser compose
	$(BIN)/pytest -q -x --durations=15 -n 2 --dist loadscope

test: lint typecheck pytest

bench: $(STAMP)
	bench/run.sh

clean:
	rm -rf $(VENV) .opsgate .mypy_cache .ruff_cache .pytest_cache
