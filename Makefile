# shellgate: the two commands a newcomer needs are `make run` and `make test`.
# Everything they need is installed here, into .venv, from PyPI.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ETCD   := .cache/etcd/usr/bin/etcd
PYTEST_ARGS ?=

.PHONY: run test lint unit format bench bench-scale proto clean help fuzz

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $(STAMP)

run: $(STAMP) ## Start the gateway on SQLite with the local driver
	$(BIN)/shellgate serve

test: lint unit ## Lint, then every test (starts a throwaway Postgres unless SHELLGATE_TEST_DATABASE_URL is set)

# A private --basetemp: pytest's shared default keeps only the newest three runs' folders and
# deletes older ones, which would pull the data directory out from under another run's Postgres.
unit: $(STAMP)
	@tmp="$$(mktemp -d /tmp/shellgate-pytest.XXXXXX)"; \
	$(BIN)/pytest --basetemp="$$tmp" $(PYTEST_ARGS); status=$$?; \
	rm -rf "$$tmp"; exit $$status

lint: $(STAMP) ## ruff, mypy and the architecture's import layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## Rewrite the code in ruff's format
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(STAMP) ## Regenerate shellgate/api/gen from the .proto files
	$(BIN)/python tools/gen_api.py

bench: $(STAMP) $(ETCD) ## Run the store benchmark; writes its section of docs/benchmarks.md
	$(BIN)/python -m bench.store_cas

bench-scale: $(STAMP) ## Run the scale benchmark (about 30 minutes, 20 of them the soaks); rewrites its section of docs/benchmarks.md
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	$(BIN)/python -m bench.scale --sizes 1000,10000,100000 --startup-sizes 1000,10000,100000

# etcd is the benchmark's comparison peer, never a dependency of shellgate. Without an etcd
# on PATH, the Debian package is unpacked here (no root needed); bench/etcd_server.py looks
# in the same place.
$(ETCD):
	@if command -v etcd >/dev/null; then mkdir -p $(@D) && ln -sf "$$(command -v etcd)" $@; else \
	  mkdir -p .cache/etcd && cd .cache && apt-get download etcd-server && \
	  dpkg -x etcd-server_*.deb etcd && rm -f etcd-server_*.deb; fi

clean: ## Remove the virtualenv, local state and the unpacked etcd
	rm -rf $(VENV) .shellgate .cache

fuzz: $(STAMP) ## The long fuzz run (nightly): SHELLGATE_FUZZ_EXAMPLES examples per backend, a printed seed
	@tmp="$$(mktemp -d /tmp/shellgate-pytest.XXXXXX)"; \
	SHELLGATE_FUZZ_EXAMPLES=$${SHELLGATE_FUZZ_EXAMPLES:-5000} SHELLGATE_FUZZ_SEED=$${SHELLGATE_FUZZ_SEED:-20251107} \
	$(BIN)/pytest --basetemp="$$tmp" -s -p no:logging -o log_cli=false --timeout=0 tests/fuzz $(PYTEST_ARGS); status=$$?; \
	rm -rf "$$tmp"; exit $$status
