# support-node: `make run` starts the node, `make test` runs every test.
# Both create .venv when missing and install the project into it; nothing else is needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch (later issues) must come from the CPU wheel in PIP_FIND_LINKS, never a CUDA build.
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test bench lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import node, pynetdicom, Crypto" && touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test,dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import node, pytest, psycopg" && touch $@ $(VENV)/.installed-run

## run: start the node on embedded defaults (home ./var, DIMSE on 127.0.0.1:11112)
run: $(VENV)/.installed-run
	$(BIN)/support-node serve

## system-deps: dcmtk (test peers) and PostgreSQL (index tests), from Debian, when missing
system-deps:
	@./.ci/system-deps

## test: every test, including the ones that start real servers
test: $(VENV)/.installed-test system-deps
	$(BIN)/pytest

## bench: benchmark tables (ingest rate beside pynetdicom, dcmtk and Orthanc)
bench: $(VENV)/.installed-test system-deps
	rc=0; \
	$(BIN)/python bench/run.py || rc=1; \
	$(BIN)/python bench/query_bench.py || rc=1; \
	$(BIN)/python bench/retrieve_bench.py || rc=1; \
	$(BIN)/python bench/preprocess_bench.py || rc=1; \
	$(BIN)/python bench/loader_bench.py || rc=1; \
	$(BIN)/python bench/web_bench.py || rc=1; \
	exit $$rc

lint: $(VENV)/.installed-test
	$(BIN)/ruff check node pipelines tests bench
	$(BIN)/mypy node

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
