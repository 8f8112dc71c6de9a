# Two commands on a fresh machine with only Python 3.11+: `make run` and `make test`.
# The first interpreter that really runs and is 3.11+ (pyenv shims may exist without a version behind them).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do $$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-quick fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/omnistock up --demo

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/pytest -n $${PYTEST_WORKERS:-2} -q

# The browser tests (tests/browser/) drive Debian's chromium; as root it is installed when missing,
# otherwise those tests skip and say why.
CHROMIUM := /usr/bin/chromium
.PHONY: browser
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			|| echo "WARNING: apt-get could not install chromium: the browser tests will skip and say so"; \
	else \
		echo "$(CHROMIUM) is missing and this is not root: the browser tests will skip" \
		     "(as root: apt-get install chromium; or set OMNISTOCK_CHROMIUM to a Chromium binary)"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .omnistock .pytest_cache

fuzz: $(STAMP)
	FUZZ_EXAMPLES=200 $(BIN)/pytest -q tests/test_fuzz.py

# Reliability: kill -9 and PostgreSQL restarts under traffic (benchmarks/drills/), then the soak (memory, and
# table sizes under a short retention window: SOAK_RETENTION_S, SOAK_HOUSEKEEPING_S).
.PHONY: drill soak
drill: $(STAMP)
	$(BIN)/python -m benchmarks.drills

soak: $(STAMP)
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/python -m benchmarks.drills.soak
