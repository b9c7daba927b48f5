# Two set-up commands: `make demo` (run the pipeline on generated sample logs) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PICKAPIC_HOME ?= data

.PHONY: demo test bench install install-dev ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/pickapic demo --home $(PICKAPIC_HOME)

test: install-dev
	$(BIN)/python -m pytest -n 2 -q tests

bench: install-dev
	$(BIN)/python -m benchmarks.run

ui: install
	$(BIN)/pickapic ui --home $(PICKAPIC_HOME)

clean:
	rm -rf $(PICKAPIC_HOME) .pytest_cache
