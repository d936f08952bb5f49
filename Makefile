# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install torch (the CUDA wheel: it also runs on CPU; CPU-only wheels break
# torchvision/open_clip imports) and this package with its C++ (and, for tests, CUDA) extensions.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
CUDA_HOME_DETECTED := $(shell bash scripts/cuda_home.sh)
BUILD_ENV := MAX_JOBS=2 TORCH_CUDA_ARCH_LIST="8.0;9.0" $(if $(CUDA_HOME_DETECTED),CUDA_HOME=$(CUDA_HOME_DETECTED))
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: install install-cuda browser demo test bench gpu-check tensorboard health clean

$(VENV)/.torch:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(PIP) install -q $(TORCH_PINS)
	touch $@

# CPU extension only (fast install for the demo); CUDA sources are added when a GPU is visible.
$(VENV)/.installed: $(VENV)/.torch $(EXT_SOURCES)
	$(BUILD_ENV) $(PIP) install -q -e ".[dev]" --no-build-isolation
	touch $@

# Tests also compile the .cu sources without a GPU (FORCE_CUDA=1) so they never rot.
$(VENV)/.installed-cuda: $(VENV)/.torch $(EXT_SOURCES)
	$(BUILD_ENV) $(if $(CUDA_HOME_DETECTED),FORCE_CUDA=1) $(PIP) install -q -e ".[dev]" --no-build-isolation
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-cuda: $(VENV)/.installed-cuda

# A demo may run again: it replaces its own earlier checkpoints (a training run otherwise refuses to).
demo: $(if $(NO_INSTALL),,install)
	$(PY) -m hnerv_fast.train --config configs/dual_hnerv_tiny.yaml output.overwrite=true
	$(PY) -m hnerv_fast.train --config configs/cascade_tiny.yaml output.overwrite=true

# Headless Chromium for the dashboard screenshot test (Debian package; the test skips without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } || \
	  echo "chromium not installed: the TensorBoard screenshot test will be skipped"

# Slow tests (marked `slow`) run in CI (CI=true) and with `make test SLOW=1`.
test: install-cuda browser
	bash scripts/run_tests.sh $(PY) $(PYTEST_ARGS)

bench: install
	$(PY) -m pytest benchmarks --benchmark-only -p no:cacheprovider -s

# Every GPU path on one CUDA device (< 8 min on an H100/H200): GPU tests, op bandwidth, train-step timings.
# Logs and summary.txt in $(GPU_CHECK_OUT). On a machine without network: make gpu-check NO_INSTALL=1 PY=python3
GPU_CHECK_OUT ?= output/gpu_check
gpu-check: $(if $(NO_INSTALL),,install-cuda)
	PY=$(PY) bash scripts/gpu_check.sh $(GPU_CHECK_OUT)

tensorboard: install
	$(PY) -m hnerv_fast.tensorboard --logdir output

health: install
	$(PY) -m hnerv_fast.health output

clean:
	rm -rf $(VENV) build *.egg-info hnerv_fast/*.so
