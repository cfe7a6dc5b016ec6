# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint services bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/deltafeed demo $(DEMO_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# PostgreSQL and Redis for the storage tests: started when they are down (see scripts/services.sh).
services:
	bash scripts/services.sh

test: lint services
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The everyday subset (under 3 minutes): everything but the end-to-end runs marked slow.
test-fast: lint services
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
