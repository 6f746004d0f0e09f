# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv and install what they need (torch from the pinned, locally available wheels).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are pinned explicitly so pip never resolves to an unexpected multi-GB build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]' $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

# The browser test of `gcmae serve` (tests/serve/test_browser.py) drives Debian's Chromium through Playwright
# (never `playwright install`: it downloads browsers). Installed here when missing; without apt-get the test skips.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium with apt-get (not root?): the browser test will fail; install it"; \
	else echo "no apt-get here: chromium not installed, the browser test will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/gcmae demo --out runs/demo

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q

# the edit loop: everything not marked slow (under a minute); `make test` (and CI) still runs everything
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
