# Two commands: `make demo` (the main job end to end) and `make test`.
# Each creates or updates .venv from this repository's own files.

# Debian's python3 (3.11) is preferred: PyTriton's Python-backend stub fails under
# pyenv's 3.11.7 (pytriton issue #51). Override with PYTHON=... if yours is elsewhere.
PYTHON ?= $(shell for p in /usr/bin/python3.11 /usr/bin/python3 python3.11 python3; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV ?= .venv
REDIS_URL ?= redis://127.0.0.1:6379/0
export LEADRE_REDIS_URL := $(REDIS_URL)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv redis test demo bench lint clean serve e2e loadtest serving-bench

# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel, not a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 with venv is required (Debian: apt-get install python3.11-venv)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

redis: venv
	@bash scripts/ensure_redis.sh "$(REDIS_URL)" "$(VENV)/bin/python"

test: venv redis
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: venv redis
	$(VENV)/bin/leadre demo

bench: venv
	$(VENV)/bin/python bench/index_bench.py
	$(VENV)/bin/python bench/table5_bench.py
	$(VENV)/bin/python bench/decode_bench.py

# The live system on the demo's artifacts (run `make demo` first).
serve: venv redis
	$(VENV)/bin/leadre serve all --world runs/demo/world --model runs/demo/model --index runs/demo/index

# Issue 5's end-to-end figures: 1,000 behaviour events for 200 users, worker killed mid-run.
e2e: venv redis
	$(VENV)/bin/python bench/e2e_nearline.py --run runs/demo --users 200 --events 1000

LOADTEST_USERS ?= 32
LOADTEST_TIME ?= 20s
LOADTEST_HOST ?= http://127.0.0.1:8080

# 20 s headless Locust run (HTTP + gRPC users) against a running `make serve`.
loadtest: venv
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u $(LOADTEST_USERS) -r $(LOADTEST_USERS) \
	  -t $(LOADTEST_TIME) --host $(LOADTEST_HOST) --only-summary

# Issue 6's serving + balancing figures (flushes Redis db 15).
serving-bench: venv redis
	$(VENV)/bin/python bench/serving_bench.py
	$(VENV)/bin/python bench/balance_bench.py

lint: venv
	$(VENV)/bin/ruff check leadre leadre_model services tests bench loadtest

clean:
	rm -rf runs .leadre_cache .pytest_cache
