# Two-command quickstart: `make run` (install + the main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= experiments/quickstart.yaml
WORKERS ?= 2

.PHONY: install run test test-fast lint docs bench clean clean-results

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/harness run $(CONFIG)

# the whole suite, as CI runs it, in $(WORKERS) processes (pytest-xdist)
test: install
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

# the edit loop: the tests not marked slow, in about two minutes on two cores
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check harness tests benchmarks notebooks docs

docs: install
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/causal_metrics.py

# build products only: never a run's results (see clean-results)
clean:
	rm -rf $(VENV) site build dist .pytest_cache .ruff_cache harness.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# results: every run's records, tables and MLflow store in this folder; asks first
clean-results:
	@echo "This deletes outputs/, mlflow.db and mlruns/ in $(CURDIR): every run made here."
	@read -p "Type 'delete' to go on: " answer && [ "$$answer" = delete ] && \
		rm -rf outputs mlruns mlflow.db mlflow.db.lock && echo deleted || echo "nothing deleted"
