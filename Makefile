# Two commands on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distilset-installed

.PHONY: setup demo test lint bench-baselines clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(PY) -m distilset.demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

bench-baselines: setup
	$(PY) benchmarks/baselines.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
