# Two commands for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/imagefit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/imagefit

install: $(BIN)/imagefit

demo: install
	$(BIN)/imagefit demo

test: install
	$(BIN)/python -m pytest -q --cov=imagefit --cov-report=term:skip-covered

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done
