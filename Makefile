# Makefile for lakehouse. Targets other than the contract ones are added alongside.
# Run `make help` for the list.

PY ?= .venv/bin/python
# The directory holding the venv's console scripts (buf, protoc-gen-mypy...).
SCRIPTS = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
BUF ?= $(SCRIPTS)/buf

# --- the protobuf contract ---------------------------------------------------------------
#
# proto/ is the import root. Imported google files are never copied into the repo:
# well-known types come from grpcio-tools' bundled protos, google/rpc/*.proto from the
# googleapis-common-protos wheel.
PROTO_ROOT := proto
PROTO_FILES = $(sort $(wildcard $(PROTO_ROOT)/lakehouse/v1/*.proto))
WKT_INCLUDE = $(shell $(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
GOOGLEAPIS_INCLUDE = $(shell $(PY) -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(m.__file__))))')
PROTOC = $(PY) -m grpc_tools.protoc -I $(PROTO_ROOT) -I $(WKT_INCLUDE) -I $(GOOGLEAPIS_INCLUDE)

GEN_DIR := gen
GEN_PKG := $(GEN_DIR)/lakehouse/v1
DESCRIPTOR := $(GEN_PKG)/lakehouse_v1.binpb
# A scratch image of the working-tree protos, for buf (not committed).
IMAGE := .build/lakehouse_v1.binpb
# The last released contract; `make buf-breaking` compares against it.
BASELINE := $(PROTO_ROOT)/baseline/lakehouse_v1.binpb
BUF_FLAGS := --config $(PROTO_ROOT)/buf.yaml --path lakehouse/v1

.PHONY: help gen gen-check image buf-lint buf-breaking buf-baseline

help: ## List the targets.
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.venv: ## Create the development venv with the server and all dev tools.
	python3 -m venv .venv
	.venv/bin/pip install -e '.[dev]'

gen: ## Regenerate gen/ (Python stubs, .pyi types, descriptor set) from proto/.
	rm -rf $(GEN_DIR)/lakehouse
	mkdir -p $(GEN_PKG)
	$(PROTOC) \
	  --plugin=protoc-gen-mypy=$(SCRIPTS)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(SCRIPTS)/protoc-gen-mypy_grpc \
	  --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
	  --descriptor_set_out=$(DESCRIPTOR) --include_imports --include_source_info \
	  $(PROTO_FILES)
	printf '%s\n' '"""Generated gRPC stubs of the lakehouse.v1 contract (`make gen`; do not edit)."""' \
	  > $(GEN_PKG)/__init__.py
	touch $(GEN_PKG)/py.typed

gen-check: gen ## Fail if gen/ is not what `make gen` produces from proto/.
	git diff --exit-code -- $(GEN_DIR)/
	@untracked="$$(git ls-files --others --exclude-standard -- $(GEN_DIR)/)"; \
	if [ -n "$$untracked" ]; then \
	  echo "gen/ has files not in git (run make gen and git add them):"; echo "$$untracked"; \
	  exit 1; \
	fi

image: ## Compile proto/ into a scratch image (.build/) for buf.
	mkdir -p $(dir $(IMAGE))
	$(PROTOC) --descriptor_set_out=$(IMAGE) --include_imports --include_source_info $(PROTO_FILES)

buf-lint: image ## Lint the contract (buf STANDARD + COMMENTS, no exceptions).
	$(BUF) lint $(IMAGE) $(BUF_FLAGS)

buf-breaking: image ## Fail on a breaking change (buf FILE) against the baseline.
	$(BUF) breaking $(IMAGE) --against $(BASELINE) $(BUF_FLAGS)

buf-baseline: buf-lint ## Deliberately accept the current contract as the baseline: make buf-baseline REASON="..."
	@if [ -z "$(REASON)" ]; then \
	  echo 'Say why the baseline moves: make buf-baseline REASON="v1.2.0 released"'; exit 2; fi
	mkdir -p $(dir $(BASELINE))
	$(PROTOC) --descriptor_set_out=$(BASELINE) --include_imports $(PROTO_FILES)
	@$(PY) -c 'import sys, datetime, pathlib; \
	  p = pathlib.Path("CHANGELOG.md"); lines = p.read_text().splitlines(); \
	  k = lines.index("## Unreleased"); \
	  j = next((j for j in range(k + 1, len(lines)) if lines[j].startswith(("- ", "#"))), len(lines)); \
	  entry = f"- Contract baseline refreshed on {datetime.date.today()}: {sys.argv[1]}"; \
	  lines[j:j] = [entry] if lines[j:j + 1] and lines[j].startswith("- ") else [entry, ""]; \
	  p.write_text("\n".join(lines).rstrip() + "\n")' '$(REASON)'
	@echo "Baseline updated; commit $(BASELINE) with CHANGELOG.md."

# --- development: venv, tests, lint, run -------------------------------------------------
#
# `make test` and `make run` need nothing but python3 (and root or sudo for the Debian
# packages the tests use): they create the venv and install what is missing themselves.
PYTHON ?= python3
# Reinstalls when pyproject.toml changes (the `.venv` directory target above does not).
VENV_STAMP := .venv/.installed-dev
SYSTEM_DEPS := tests/tools/install-system-deps.sh
PYTEST_ARGS ?=
# `make test` measures line and branch coverage of lakehouse/, the `lakehouse` processes the
# tests start included, prints it (least covered first), writes htmlcov/, and fails below
# [tool.coverage.report] fail_under (pyproject.toml). COVERAGE=0 runs without it (quicker; and
# a subset of the tests, PYTEST_ARGS=tests/..., would fail the threshold).
COVERAGE ?= 1
COV_ARGS = $(if $(filter-out 0 no false,$(COVERAGE)),--cov --cov-report=term --cov-report=html)

.PHONY: install system-deps readers test faults run grpcurl lint

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

install: $(VENV_STAMP) ## Create or update the venv (server + dev tools) when pyproject.toml changed.

system-deps: ## Install the Debian packages the tests use (PostgreSQL, promtool); quick when present.
	bash $(SYSTEM_DEPS)

readers: $(VENV_STAMP) ## The readers of our tables nobody here wrote (DuckDB 1.5.5 + its Iceberg extension, a venv of its own under .build/).
	PYTHONPATH=tests $(PY) -c 'from fixtures.duckdb15 import duckdb15_python; duckdb15_python()'

test: $(VENV_STAMP) system-deps readers ## Run the whole test suite (all markers: faults, bench, slow too) with coverage: [COVERAGE=0]
	@# Data of an earlier or killed run must not count (pytest-cov erases too; this also
	@# clears .coverage.* files left by children of a run that was itself killed).
	$(PY) -m coverage erase
	@rc=0; $(PY) -m pytest $(COV_ARGS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: that is a failure" >&2; fi; \
	exit $$rc

faults: $(VENV_STAMP) system-deps readers ## Only the fault-injection suite (tests/faults: real processes killed, services stopped).
	$(PY) -m pytest -m faults tests/faults $(PYTEST_ARGS)

# `make run` has a venv of its own with only what serving needs (no test, lint or contract
# tools): a newcomer's first run downloads a fraction of the dev venv. Ports and other
# settings come from the environment (LAKEHOUSE_GRPC_PORT=50052 make run) or as flags in ARGS
# (make run ARGS="--grpc-port 50052 --http-port 9181").
RUN_VENV := .venv-run
RUN_STAMP := $(RUN_VENV)/.installed-run
ARGS ?=

$(RUN_STAMP): pyproject.toml
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install --disable-pip-version-check -q -e .
	touch $@

run: $(RUN_STAMP) ## Serve on the embedded default (SQLite catalog + ./lakehouse-data): [LAKEHOUSE_GRPC_PORT=...] [ARGS="--grpc-port ... --http-port ..."]
	$(RUN_VENV)/bin/lakehouse serve $(ARGS)

grpcurl: $(RUN_STAMP) ## Put grpcurl in .venv-run/bin (the README's walkthrough uses it; the dev venv has its own).
	$(RUN_VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[grpcurl]'

lint: $(VENV_STAMP) ## ruff check, ruff format --check, mypy (config in pyproject.toml).
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# --- benchmarks --------------------------------------------------------------------------
#
# `make bench` runs every scenario in bench/scenarios.py against separate `lakehouse serve`
# processes, on the embedded default (SQLite + folder) and then on a throwaway PostgreSQL
# catalog + moto S3 (each on fresh servers), and writes bench/results.json and
# bench/results.md (see bench/README.md). QUICK=1: short durations (CI).
# BACKEND=embedded or BACKEND=postgres_s3: only that one. postgres_s3 needs Debian's postgresql
# (system-deps installs it when missing; skipped for BACKEND=embedded).
BACKEND ?= all
QUICK ?=
BENCH_ARGS ?=
BENCH_QUICK_FLAG = $(if $(filter-out 0 no false,$(QUICK)),--quick)
BENCH_DEPS = $(VENV_STAMP) $(if $(filter embedded,$(BACKEND)),,system-deps)

.PHONY: bench

bench: $(BENCH_DEPS) ## Benchmarks on embedded and postgres_s3 -> bench/results.{json,md}: [QUICK=1] [BACKEND=embedded|postgres_s3]
	$(PY) -m bench --backend $(BACKEND) $(BENCH_QUICK_FLAG) $(BENCH_ARGS)
