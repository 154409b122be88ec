# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench bench-quick clean sysdeps test-media-netns soak

# System packages the test suite drives for real (a CONNECT proxy, an MQTT broker, the
# cluster's PostgreSQL and NATS, HAProxy in front of its replicas, nginx to check the doc's
# recipe), as package:binary; installed with apt-get when root and a binary is missing,
# otherwise the tests that need them say why they cannot run. A binary is looked for on PATH
# and where Debian puts PostgreSQL's server binaries (/usr/lib/postgresql/<v>/bin).
# chromium: the dashboard's real-browser test (tests/e2e/test_dashboard.py, via Playwright).
SYSDEPS := tinyproxy:tinyproxy mosquitto:mosquitto postgresql:initdb nats-server:nats-server \
           haproxy:haproxy nginx:nginx chromium:chromium

$(BIN)/.installed: pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tether needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(BIN)/.installed
	$(BIN)/tether demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

sysdeps:
	@missing=""; for dep in $(SYSDEPS); do pkg=$${dep%%:*}; bin=$${dep#*:}; \
	  command -v $$bin >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$$bin >/dev/null 2>&1 \
	    || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (not root: install them for the tests that drive them)"; fi; \
	fi

# The suite runs in PYTEST_WORKERS processes (pytest-xdist): most of its time is spent
# waiting on controllers, nodes and servers it started, so more workers than cores pay.
# Work-stealing keeps a worker busy while another sits in a long test. One process, to
# debug: make test PYTEST_WORKERS=0 (or plain .venv/bin/pytest, which stays serial).
# Then test-media-netns, where it can run (root, unshare -n allowed: CI); else a line says
# why it was skipped.
PYTEST_WORKERS ?= 4

test: lint sysdeps
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "skipped test-media-netns: not root (unshare -n needs root; CI runs it as root)"; \
	elif ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then \
	  echo "skipped test-media-netns: no unshare (util-linux) or ip (iproute2) on PATH"; \
	elif ! unshare -n true 2>/dev/null; then \
	  echo "skipped test-media-netns: this machine refuses 'unshare -n' (a container without CAP_SYS_ADMIN?)"; \
	else $(MAKE) --no-print-directory test-media-netns; fi

# The dashboard's media test in a network namespace holding only lo (root, util-linux's
# unshare, iproute2's ip): Chromium then has no address but 127.0.0.1 to offer, and the test
# asserts both ends of the selected candidate pair are 127.0.0.1.
test-media-netns: $(BIN)/.installed
	unshare -n sh -c 'ip link set lo up && $(BIN)/pytest tests/e2e/test_dashboard_media.py'

bench: $(BIN)/.installed
	$(BIN)/tether bench --out bench-results.json

bench-quick: $(BIN)/.installed
	$(BIN)/tether bench --quick --out bench-results.json

# The long fault-injecting soak (issue 16, docs/reliability.md): SOAK_S seconds of random
# faults and kill -9s, then the history checker; writes soak-report.json here and fails when
# it found violations. SOAK_CLUSTER=1: two replicas on PostgreSQL + NATS (killed too).
# SOAK_SEED replays a run's decisions (the seed is in every report).
SOAK_S ?= 1800
SOAK_CLUSTER ?=
SOAK_SEED ?=

soak: $(BIN)/.installed sysdeps
	$(BIN)/python -m tether.tools.soak run --seconds $(SOAK_S) --report soak-report.json \
	  $(if $(SOAK_CLUSTER),--cluster) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

clean:
	rm -rf $(VENV) .tether .pytest_cache .ruff_cache .mypy_cache .hypothesis
