# Two set-up commands: `make demo` (run the pipeline on generated sample logs) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PICKAPIC_HOME ?= data

.PHONY: demo test bench install install-dev ui clean

# pip runs quietly (its resolver output is thousands of lines), so each step says what it does and how long it takes.
$(BIN)/python:
	@echo ">> [1/3] creating the virtualenv $(VENV) with $(PYTHON) (a few seconds)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo ">> [2/3] installing pickapic-pipeline into $(VENV): PyTorch, Apache Beam, Dagster, DuckDB, NudeNet, ..."
	@echo "         about 7 minutes and 2.6 GB on a fresh machine, once; later runs skip this step"
	@start=$$(date +%s); $(BIN)/pip install --quiet -e . && echo ">> installed in $$(( $$(date +%s) - start )) s"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo ">> [2/3] installing pickapic-pipeline with the test extras into $(VENV): PyTorch, Apache Beam, Dagster, ..."
	@echo "         about 7 minutes and 2.6 GB on a fresh machine, once; later runs skip this step"
	@start=$$(date +%s); $(BIN)/pip install --quiet -e '.[dev]' && echo ">> installed in $$(( $$(date +%s) - start )) s"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	@echo ">> [3/3] the demo into $(PICKAPIC_HOME): simulate 3 days of app logs, build every asset through Dagster,"
	@echo "         train the preference model briefly, print a summary (1-2 minutes on 2 cores)"
	$(BIN)/pickapic demo --home $(PICKAPIC_HOME)

test: install-dev
	@echo ">> [3/3] the whole test suite on 2 workers (40-50 minutes on 2 cores, more on a slow machine)"
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=15 tests

bench: install-dev   # make bench BENCH_ARGS="--quick --only dedup,shards"
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

ui: install
	$(BIN)/pickapic ui --home $(PICKAPIC_HOME)

clean:
	rm -rf $(PICKAPIC_HOME) .pytest_cache
