# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint format clean system-deps soak bench bench-million

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(INSTALLED)

install: $(INSTALLED)

# `exec`: the runner replaces the recipe's shell, so Ctrl-C reaches it alone (a shell would die of the
# SIGINT and make would report "Interrupt"); the runner stops everything and exits 0.
run: $(INSTALLED)  ## start web, worker and scheduler (and an embedded Redis when REDIS_URL is unset)
	export PATH="$(CURDIR)/$(BIN):$$PATH"; exec $(BIN)/python -m service.dev.run

# Debian packages some tests need: chromium (the browser test), redis-server
# (the TLS test, as the wheels' servers have no TLS, and the server matrix),
# libjemalloc2 (preloaded into the wheels' servers, built with libc's malloc),
# faketime (clock tests, the soak's clock jump) and prometheus (the tests of
# docs/prometheus and docs/grafana: promtool and the server). As root with
# apt-get, install what is missing; elsewhere those tests say why they skip.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	ldconfig -p 2>/dev/null | grep -q libjemalloc || missing="$$missing libjemalloc2"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "cannot install$$missing here: the tests that need them will be skipped"; fi; \
	fi

# The servers the tests marked `matrix` also run on: every one but the suite's own
# (REDIS_SERVER, else the embedded default); Debian's only where it is installed, or under CI=true.
OTHER_SERVERS = $(shell $(BIN)/python -c 'from service.dev.embedded_redis import other_servers; print(*other_servers())')

test: $(INSTALLED) system-deps  ## lint, the layer contract, the whole suite on the embedded Redis, then the fault and scheduler tests on the other servers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest
	@for server in $(OTHER_SERVERS); do \
	  echo "REDIS_SERVER=$$server pytest -m matrix"; \
	  REDIS_SERVER=$$server PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m matrix || exit 1; \
	done

soak: $(INSTALLED) system-deps  ## 10 minutes of mixed load, worker restarts, a Redis outage, a clock jump and a full Redis (SOAK_SECONDS to change)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/soak.py

# Benchmark-only tools (Celery, py-spy) on top of the test tools; wrk comes from Debian when root.
$(VENV)/.bench-installed: $(INSTALLED) requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is not installed: bench/http_enqueue.py will stop"; fi; }
	touch $@

bench: $(VENV)/.bench-installed  ## ours vs stock RQ, rq-scheduler, RQ cron and Celery, side by side; a Markdown table (~8 min; stock rq-scheduler's 100,000-run pass is 1.5 of them)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run_all.py --out $(VENV)/bench-results.jsonl

bench-million: $(INSTALLED)  ## a million schedules: Redis bytes each, a minute's firing lag, PUT latency, scheduler RSS (~6 min, ~0.5 GB of Redis)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/scheduler_million.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
