# Every target installs what it needs: on a fresh machine `make demo` and `make test` are all the set-up.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

BROWSER_STAMP := $(VENV)/.installed-browser

.PHONY: install demo test bench lint clean browser node-client

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import proto.build as b; b.generate(force=True)"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# Peers whose pins clash with the service's packages (spu: numpy < 2) get their own interpreter. A peer that
# cannot be installed here is reported unavailable by the benchmark, with the reason, never dropped.
$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet spu openmined-psi || echo "peer packages not installed: benchmarks.psi reports them unavailable"
	touch $(PEERS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m simulations.demo

# tests/test_console_browser.py drives the consoles in Debian's chromium (Playwright, no browser download);
# installed here when missing (CI runs as root; elsewhere sudo asks once).
$(BROWSER_STAMP):
	command -v chromium >/dev/null || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }
	mkdir -p $(VENV) && touch $(BROWSER_STAMP)

browser: $(BROWSER_STAMP)

# tests/test_api_v2.py runs the Node.js example of docs/api.md (clients/node): Node and npm from Debian when missing,
# the two npm packages into clients/node/node_modules (gitignored).
NODE_STAMP := clients/node/node_modules/.installed
$(NODE_STAMP): clients/node/package.json
	command -v node >/dev/null && command -v npm >/dev/null || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y nodejs npm; }
	cd clients/node && npm install --no-audit --no-fund
	touch $(NODE_STAMP)

node-client: $(NODE_STAMP)

test: $(STAMP) $(BROWSER_STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q

bench: $(BENCH_STAMP) $(PEERS_STAMP)
	$(PY) -m benchmarks.run_all --peer-python $(PEERS_VENV)/bin/python

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(PEERS_VENV) build *.egg-info demo-out
