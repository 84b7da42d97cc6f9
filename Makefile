# Two commands set everything up (`git clone`, `make setup`); `make demo` runs the main job and
# `make test` runs everything CI runs. Each target creates the virtual environment if it is missing.
#
# torch comes first, pinned, so that nothing later pulls the multi-GB CUDA build from the registry.
# GPU users pick their CUDA build, e.g.:
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Pinned dependency versions (pip constraints); CONSTRAINTS=/dev/null lets pip resolve freely.
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctvis-installed

.PHONY: setup test test-fast demo bench gpu-check clean-runs lock

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

# Refresh the pinned versions from the current environment (after changing dependencies).
lock: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -iE '^(torch|nvidia-|triton)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Everything CI runs: unit, integration (real Ray, moto S3 server, mlflow server) and parity tests.
test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# Unit tests only (no servers, no Ray).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slow"

demo: $(STAMP)
	$(PY) -m pipelines.demo

# On a CUDA machine: the parity tests on the GPU (TF32 off), a timed R50 training step (fp32, AMP) and
# a 36-frame inference, one JSON line. Without a GPU it says so and exits 0.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf mlruns runs demo_output
