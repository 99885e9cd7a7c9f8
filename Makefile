# Thin wrappers over uv. `make dev` runs the system, `make test` runs the tests.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
# The `local-model` group (llama.cpp's server + SmolLM2) is installed by `make dev-local`,
# `make bench ARGS="--upstream local"` or any target with ECHOTUNE_LOCAL_MODEL=1, and kept by
# later syncs until ECHOTUNE_LOCAL_MODEL=0 (or `make clean`). Building llama-cpp-python takes
# ~8 min, once per machine (uv caches the wheel; pyproject.toml pins its build flags).
LOCAL_MODEL_INSTALLED := $(wildcard .venv/lib/python3*/site-packages/llama_cpp)
LOCAL_MODEL := $(if $(filter 0 false no,$(ECHOTUNE_LOCAL_MODEL)),,$(or \
  $(filter 1 true yes,$(ECHOTUNE_LOCAL_MODEL)),$(findstring --upstream local,$(ARGS)),$(LOCAL_MODEL_INSTALLED)))
SYNC_GROUPS := $(if $(LOCAL_MODEL),--group local-model)

.PHONY: help uv sync dev dev-local test test-cluster capacity bench-start test-fast lint fmt clean vendor-ui soak load fuzz

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

uv:  ## Install uv with pip when it is missing
	@test -x "$(UV)" || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

sync: uv  ## Create the virtual environment from uv.lock
	@$(UV) sync --frozen --quiet $(SYNC_GROUPS)

dev: sync  ## Run the whole system locally (gateway on :8080)
	$(UV) run --frozen python -m deploy.local.dev

dev-local:  ## `make dev` with a local LLM (llama.cpp + SmolLM2-135M, offline; first build ~8 min)
	@ECHOTUNE_LOCAL_MODEL=1 $(MAKE) --no-print-directory dev

# `make test` in two phases. First everything but the `serial` tests on TEST_WORKERS pytest
# workers (pytest-xdist; a test file stays on one worker, with its module's stack; each worker
# starts its own fake upstream and shared stack, and its own Redis and SecantusDB unless
# REDIS_URL / MONGODB_URL name shared ones: tests keep to namespaces of their own). Then the
# `serial` tests (load, soak, capacity, chaos runs and the start flood, benchmarks, llama.cpp,
# the breaker probe, the profile's TTFT measurement) alone: they load the machine or measure
# it. Both phases run; the first failure's code is the exit code. pytest exits 5 when it
# collected no test: that is a failure too, said plainly.
TEST_WORKERS ?= 2
PYTEST := $(UV) run --frozen pytest

test: sync  ## Run the whole test suite (unit, end-to-end and browser tests in parallel, then the serial ones)
	@$(PYTEST) tests/unit tests/e2e tests/browser -m "not serial" -n $(TEST_WORKERS) \
	    --dist loadfile --durations=20; first=$$?; \
	  if [ $$first -eq 5 ]; then echo 'no tests were collected'; fi; \
	  $(PYTEST) tests/unit tests/e2e tests/browser -m serial --durations=10; second=$$?; \
	  if [ $$second -eq 5 ]; then echo 'no serial tests were collected'; fi; \
	  if [ $$first -ne 0 ]; then exit $$first; fi; exit $$second

SOAK_SECONDS ?= 240

soak: sync  ## Soak: SOAK_SECONDS of chats with and without failures; Redis memory levels off
	ECHOTUNE_SOAK_SECONDS=$(SOAK_SECONDS) $(UV) run --frozen pytest tests/e2e/test_soak.py -s

LOAD_SECONDS ?= 300
FUZZ_EXAMPLES ?= 100
# evaluated once, so the seed printed is the seed used
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif

fuzz: sync  ## Schemathesis on every door, FUZZ_EXAMPLES per operation (make test: 25), seed FUZZ_SEED
	@echo "fuzzing with seed $(FUZZ_SEED) (FUZZ_SEED=$(FUZZ_SEED) replays it)"
	ECHOTUNE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ECHOTUNE_FUZZ_SEED=$(FUZZ_SEED) $(UV) run --frozen \
	  pytest tests/e2e/test_fuzz.py tests/e2e/test_analytics_door.py -k fuzzing -s


load: sync  ## 500 concurrent streams for LOAD_SECONDS through one gateway: no error, memory flat
	ECHOTUNE_LOAD_SECONDS=$(LOAD_SECONDS) $(UV) run --frozen pytest tests/e2e/test_load.py -s

test-cluster: sync  ## The `cluster` subset against a local Redis Cluster (3 primaries, 3 replicas)
	env -u REDIS_URL ECHOTUNE_REDIS_CLUSTER=1 $(UV) run --frozen pytest -m cluster tests/unit tests/e2e

capacity: sync  ## Redis commands, bytes and CPU per answer and per token (ARGS="--redis-cluster")
	$(UV) run --frozen python -m deploy.bench.capacity $(ARGS)

bench-start: sync  ## The gateway's CPU per chat start, in process (ARGS="--n 500 --rounds 5")
	$(UV) run --frozen python -m deploy.bench.start_cost $(ARGS)

test-fast: sync  ## Only the fast tests
	$(UV) run --frozen pytest tests/unit

lint: sync  ## ruff and mypy
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs/*/src services/*/src

fmt: sync  ## Format and autofix
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

vendor-ui:  ## Refresh vendored third-party files of the web UI and its tests (npm pack)
	services/gateway/scripts/vendor_ui.sh

clean:  ## Remove caches and the virtual environment
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache

# --- Docker (deploy/compose.yaml, see deploy/README.md) ---------------------------------------
COMPOSE := docker compose -f deploy/compose.yaml
N ?= 4

.PHONY: up down logs scale-workers compose-check

up:  ## Build the images and start the Docker stack; returns once every service is healthy
	$(COMPOSE) up -d --build --wait

down:  ## Stop the Docker stack, tools and ollama included (data volumes are kept)
	$(COMPOSE) --profile tools --profile ollama down --remove-orphans

logs:  ## Follow the Docker stack's logs
	$(COMPOSE) logs -f --tail=100

scale-workers:  ## Run N LLM workers in the Docker stack (make scale-workers N=4)
	$(COMPOSE) up -d --wait --no-recreate --scale llm-worker=$(N)

compose-check:  ## Validate deploy/compose.yaml, every profile, with deploy/.env.example as env
	$(COMPOSE) --env-file deploy/.env.example config -q
	$(COMPOSE) --env-file deploy/.env.example --profile tools --profile ollama config -q

# --- analytics ------------------------------------------------------------------------------
BENCH_N ?= 1000000

.PHONY: seed bench-analytics

seed: sync  ## Synthetic plays (the `make dev` user's too), telemetry, conversations into ECHOTUNE_MONGODB_URL
	$(UV) run --frozen echotune-seed --users 20 --listener dev --plays 2000 --seed 42

bench-analytics: sync  ## Analytics endpoints on BENCH_N plays + attempts (default 1000000)
	$(UV) run --frozen python -m deploy.bench.analytics --n $(BENCH_N)

# --- Benchmark (deploy/bench, results in bench/results/) -------------------------------------
.PHONY: bench

bench: sync  ## Latency benchmark: direct vs through echotune (ARGS="--quick", ARGS="--upstream local")
	$(UV) run --frozen python -m deploy.bench $(ARGS)

# --- Chaos run (deploy/chaos, results in chaos/results/) -------------------------------------
.PHONY: chaos

chaos: sync  ## Seeded faults under random traffic, every answer checked (make chaos ARGS="--seed 7 --duration 600")
	$(UV) run --frozen python -m deploy.chaos $(ARGS)

