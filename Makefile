# `make test`: create .venv, install the package with its test extras, run the suite.
# `make demo`: create .venv, install, run the main job on the embedded default data.
# Set TORCH_SPEC to choose the torch build installed first (default: the CPU build 2.13.0, which
# this project's CI machines hold on local disk; any torch>=2.4 works, e.g. TORCH_SPEC=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: test demo bench-cpu bench-gpu clean

# One stamp per extra: `make demo` installs only what the demo needs (faster on a fresh machine).
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed-demo
	$(VENV)/bin/wavepos demo

bench-cpu: $(VENV)/.installed-dev
	$(PY) bench/attention_cpu.py

bench-gpu: $(VENV)/.installed-dev
	$(PY) bench/attention_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info
