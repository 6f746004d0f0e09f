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

demo: $(STAMP)
	$(VENV)/bin/gcmae demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# the edit loop: everything not marked slow (under a minute); `make test` (and CI) still runs everything
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
