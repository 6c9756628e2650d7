# support-node: `make run` starts the node, `make test` runs every test.
# Both create .venv when missing and install the project into it; nothing else is needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch (later issues) must come from the CPU wheel in PIP_FIND_LINKS, never a CUDA build.
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

# OHIF, the viewer served by the node (prebuilt in the npm package's dist/; nothing to build).
OHIF_VERSION := 3.13.2
VIEWER := .viewer/ohif-$(OHIF_VERSION)

.PHONY: run test bench faults lint system-deps viewer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

INSTALLING := @echo "installing into $(VENV) (pyproject.toml changed, or first run): the first install downloads torch (CPU) and MONAI, about 1.8 GB installed; this takes minutes"

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(INSTALLING)
	$(PIP) -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import node, pynetdicom, Crypto" && touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(INSTALLING)
	$(PIP) -e '.[test,dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import node, pytest, psycopg" && touch $@ $(VENV)/.installed-run

## run: start the node on embedded defaults (home ./var, made on the first run; DIMSE on
## 127.0.0.1:11112)
run: $(VENV)/.installed-run viewer
	$(BIN)/support-node serve --init

## viewer: fetch OHIF $(OHIF_VERSION) into .viewer/ (ignored) when npm is present; the node
## serves it at / beside /dicom-web. Without npm (or offline) the node runs without OHIF.
viewer: $(VIEWER)/index.html

$(VIEWER)/index.html:
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "viewer: npm not found; the node will run without OHIF"; exit 0; fi; \
	rm -rf .viewer/tmp && mkdir -p .viewer/tmp && cd .viewer/tmp && \
	if npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null 2>npm.log; then \
		mkdir -p ../ohif-$(OHIF_VERSION) && \
		tar xzf ohif-app-$(OHIF_VERSION).tgz --strip-components=2 \
			-C ../ohif-$(OHIF_VERSION) --exclude=package/dist/ort package/dist && \
		cd .. && rm -rf tmp && echo "viewer: OHIF $(OHIF_VERSION) in $(VIEWER)"; \
	else echo "viewer: npm pack @ohif/app@$(OHIF_VERSION) failed; the node will run without OHIF"; \
		cat npm.log | tail -3; fi

## system-deps: dcmtk (test peers) and PostgreSQL (index tests), from Debian, when missing
system-deps:
	@./.ci/system-deps

## test: every test, including the ones that start real servers
test: $(VENV)/.installed-test system-deps viewer
	$(BIN)/pytest

## bench: benchmark tables (ingest rate beside pynetdicom, dcmtk and Orthanc)
bench: $(VENV)/.installed-test system-deps
	rc=0; \
	$(BIN)/python bench/run.py || rc=1; \
	$(BIN)/python bench/cloud_bench.py || rc=1; \
	$(BIN)/python bench/query_bench.py || rc=1; \
	$(BIN)/python bench/retrieve_bench.py || rc=1; \
	$(BIN)/python bench/preprocess_bench.py || rc=1; \
	$(BIN)/python bench/loader_bench.py || rc=1; \
	$(BIN)/python bench/web_bench.py || rc=1; \
	$(BIN)/python bench/viewer_bench.py || rc=1; \
	$(BIN)/python bench/memory_bench.py || rc=1; \
	exit $$rc

## faults: the long fault suite (50 kill -9 rounds of serve, S3 and PostgreSQL outages, a full
## home disk and a full store disk, 16 senders, 1000 malformed cases); `make test` runs its
## short version
faults: $(VENV)/.installed-test system-deps
	$(BIN)/python bench/faults.py --only kill,s3,postgres,disk,disk-store,senders,malformed

lint: $(VENV)/.installed-test
	$(BIN)/ruff check node pipelines tests bench
	$(BIN)/mypy node

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
