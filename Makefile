# Two commands on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distilset-installed

.PHONY: setup demo test quality docs tables lint bench-baselines clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(PY) -m distilset.demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The docs' benchmark tables must be what benchmarks/results/*.json give (rewrite them with `make tables`).
tables: setup
	$(PY) benchmarks/tables.py

# The fast suite: everything but the tests marked heavy (about 2 minutes on 2 cores).
test: lint
	$(PY) benchmarks/tables.py --check
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m "not heavy"

# The quality suite: default-flag margins, runs across processes (torchrun, Ray), kill and resume, the README's
# examples; and the documentation site, built strictly.
quality: docs
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m heavy

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench-baselines: setup
	$(PY) benchmarks/baselines.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
