# Two set-up commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo
SEED ?= 0
PYTEST := $(PY) -m pytest -q -n 2 --dist loadgroup

.PHONY: demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# `.[torch]` asks for torch>=2.4; naming torch==2.13.0 on the same line picks this machine's
	# local CPU wheel instead of a multi-GB CUDA build (torch only reads .pth files here).
	$(PY) -m pip install --quiet -e '.[test,inspect,torch,dev]' torch==2.13.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m psta_jax.main --config=configs/demo.py --workdir=$(WORKDIR) --config.seed=$(SEED)

# The whole suite (what CI runs).
test: $(STAMP)
	$(PYTEST) tests

# Minutes: everything but the full-size model and the multi-process / benchmark runs.
test-fast: $(STAMP)
	$(PYTEST) -m "not full_model and not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check psta_jax tests benchmarks configs
	$(PY) -m ruff format --check psta_jax tests benchmarks configs

format: $(STAMP)
	$(PY) -m ruff format psta_jax tests benchmarks configs
	$(PY) -m ruff check --fix psta_jax tests benchmarks configs

bench: $(STAMP)
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/model_throughput.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_loop.py
	$(PY) benchmarks/embed.py

clean:
	rm -rf $(VENV)
