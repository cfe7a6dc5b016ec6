# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint services consumers clients browser bench clean

# The base install (what `make demo` needs), then the test extras on top (what `make test` needs).
$(BIN)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed: $(BIN)/.base
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.base
	$(BIN)/deltafeed demo $(DEMO_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# PostgreSQL and Redis for the storage tests: started when they are down (see scripts/services.sh).
services:
	bash scripts/services.sh

# The programs that read `deltafeed export` files, each in its own venv (their pins clash with ours
# and with each other): the export tests load the files with them, and skip (saying so) when a venv
# is missing. Best effort: a registry that cannot serve them leaves the tests skipped, not failing.
# Not a prerequisite of `test`: the two venvs take 1.4 GB and 3-8 minutes to install; run
# `make consumers test` to include those checks.
consumers:
	@test -x .venv-freqtrade/bin/freqtrade || ($(PYTHON) -m venv .venv-freqtrade && .venv-freqtrade/bin/pip install -q freqtrade) || echo "freqtrade did not install; its export test will be skipped"
	@.venv-nautilus/bin/python -c 'import nautilus_trader' 2>/dev/null || ($(PYTHON) -m venv .venv-nautilus && .venv-nautilus/bin/pip install -q nautilus_trader) || echo "nautilus_trader did not install; its export test will be skipped"

# Third-party clients whose pins clash with ours, each in its own venv, for tests/thirdparty (which
# runs them in a subprocess against a replica). Small and quick, so a prerequisite of `test`; best
# effort: a client that does not install leaves its test skipped, saying so.
clients:
	@.venv-cryptofeed/bin/python -c 'import cryptofeed' 2>/dev/null || ($(PYTHON) -m venv .venv-cryptofeed && .venv-cryptofeed/bin/pip install -q 'cryptofeed==2.4.1') || echo "cryptofeed did not install; its test will be skipped"
	@# trading-ig pins lightstreamer-client-lib 1.0.3 (TLCP-2.4.0); .venv has 2.x
	@.venv-trading-ig/bin/python -c 'import trading_ig' 2>/dev/null || ($(PYTHON) -m venv .venv-trading-ig && .venv-trading-ig/bin/pip install -q 'trading-ig==0.0.25') || echo "trading-ig did not install; its test will be skipped"

# Chromium for the live page's browser test (tests/e2e/test_page_e2e.py): Debian's package, installed
# when missing and possible (root with apt-get). Best effort: where it cannot be had, that test is
# skipped, saying why. DELTAFEED_CHROMIUM names another Chromium or Chrome executable.
browser:
	@test -n "$$DELTAFEED_CHROMIUM" || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -q chromium >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } \
	  || echo "Chromium is not installed and could not be installed here; the page's browser test will be skipped"

# Test modules run on one worker more than there are cores (at most 4: much of a test's time is spent
# waiting on sockets and replicas' clocks, so a third worker on 2 cores cut the suite from 24 to 18
# minutes), a module's tests together on one worker (its replica and engine fixtures are set up once);
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n + 1 < 4 ? n + 1 : 4 )))
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile)

test: lint services browser clients
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)

# The everyday subset (under 3 minutes): everything but the end-to-end runs marked slow.
test-fast: lint services
	$(BIN)/pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .venv-freqtrade .venv-nautilus .venv-cryptofeed .venv-trading-ig build *.egg-info src/*.egg-info
