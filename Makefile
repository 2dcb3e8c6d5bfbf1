# Two set-up commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU) only reads PyTorch .pth files; it comes from this machine's local wheel.
	$(PY) -m pip install --quiet -e '.[test,inspect]' torch==2.13.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m psta_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(PY) -m ruff check psta_jax tests benchmarks configs

bench: $(STAMP)
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/model_throughput.py
	$(PY) benchmarks/input_pipeline.py

clean:
	rm -rf $(VENV)
