# Everything a fresh machine needs: `make test`, `make demo`, `make docs`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch used where none is installed (set TORCH_SPEC / PIP_TORCH_ARGS for other builds)
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
EXTRAS ?= test,chem,parquet

.PHONY: install test test-fast demo docs tutorials tutorials-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed-$(EXTRAS)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/scpredict demo --out demo_report

# `make docs` first executes every tutorial CI-sized (checks they run; stored outputs untouched, DOCS_EXECUTE=none
# skips it), then builds the site from the stored outputs. `make tutorials` re-executes them full-size and
# stores their outputs (NB="quickstart classification" for some); `make tutorials-fast` is the CI-sized run.
DOCS_EXECUTE ?= fast
NB ?=

docs:
	$(MAKE) install EXTRAS=test,chem,parquet,docs
	@if [ "$(DOCS_EXECUTE)" = "fast" ]; then $(BIN)/python tutorials/run.py --fast; fi
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

tutorials:
	$(MAKE) install EXTRAS=test,chem,parquet,docs
	$(BIN)/python tutorials/run.py $(NB)

tutorials-fast:
	$(MAKE) install EXTRAS=test,chem,parquet,docs
	$(BIN)/python tutorials/run.py --fast $(NB)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf docs/_build docs/generated docs/tutorials demo_report scpredict_logs .pytest_cache
