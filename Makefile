# covidxray tasks. `make run` sets up .venv and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA_ROOT ?= ../shared/data
# KERNELS=avx2 pins PyTorch/oneDNN/MKL to AVX2 kernels: the same weights on AVX2 and AVX512 machines (README)
KERNELS ?= native

.PHONY: setup run test bench lint format clean

setup: $(VENV)/.installed

# torch first, from the CPU build on local disk: installing torch-dependent packages first pulls a CUDA build.
# The ray extra is installed too, so the tests of --engine ray run on a local Ray instance.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $@

run: setup
	$(BIN)/covidxray --kernels $(KERNELS) run --root $(DATA_ROOT)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

format: setup
	$(BIN)/ruff check --fix src tests benchmarks tools
	$(BIN)/ruff format src tests benchmarks tools

clean:
	rm -rf runs/cache .pytest_cache .ruff_cache
