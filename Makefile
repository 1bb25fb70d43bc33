# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# Tests run on 8 virtual CPU devices so the sharded code paths are exercised without an accelerator.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu WANDB_MODE=disabled
WORKERS ?= 2

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/llmos demo --workdir runs/demo

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n $(WORKERS) --dist loadgroup --durations=20 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check llmos_jax tests configs experiments && $(VENV)/bin/ruff format --check llmos_jax tests configs experiments

bench: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) experiments/benchmark/train_throughput.py

clean:
	rm -rf runs/demo
