# Two commands for a new user: `make demo` and `make test`. Python 3.11+ and make are all they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo-pbx

.PHONY: demo test lint typecheck pytest clean

$(BIN)/retentiond: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("retentiond needs Python 3.11 or newer (set PYTHON=python3.11)" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/retentiond
	$(BIN)/retentiond demo $(DEMO_DIR)

lint: $(BIN)/retentiond
	$(BIN)/ruff check retentiond tests
	$(BIN)/ruff format --check retentiond tests

typecheck: $(BIN)/retentiond
	$(BIN)/mypy

pytest: $(BIN)/retentiond
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache
