# `make test`: create .venv, install the package with its test extras, run the whole suite.
# `make test-fast`: the same without the tests marked slow (end-to-end runs and subprocess launches).
# `make demo`: create .venv, install, run the main job on the embedded default data.
# Set TORCH_SPEC to choose the torch build installed first (default: the CPU build 2.13.0, which
# this project's CI machines hold on local disk; any torch>=2.4 works, e.g. TORCH_SPEC=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: test test-fast demo bench-cpu bench-gpu gpu-wheels clean

# One stamp per extra: `make demo` installs only what the demo needs (faster on a fresh machine).
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q tests

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow" tests

demo: $(VENV)/.installed-demo
	$(VENV)/bin/wavepos demo

bench-cpu: $(VENV)/.installed-dev
	$(PY) bench/attention_cpu.py --under-load
	$(PY) bench/model_cpu.py --quick

bench-gpu: $(VENV)/.installed-dev
	$(PY) bench/attention_gpu.py

# Wheels a bare GPU machine lacks (no registry there), for bench/gpu_session.sh (Python 3.12 there).
GPU_WHEELS ?= datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info
