# The README's two commands: `make test` and `make bench`. Each sets up everything on a fresh machine: a virtual
# environment with torch and the build tools, then the extension (with CUDA kernels where nvcc is found).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
DEPS := torch==$(TORCH_VERSION) numpy ninja pybind11 setuptools wheel pytest hypothesis matplotlib tqdm transformers \
	onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 ruff==0.17.6 clang-format==23.1.5
BENCH_ARGS ?=

# torch guesses the CUDA root from the nvcc on PATH, which may be a wrapper; point it at the toolkit.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

# The test-only ops (the CUDA grid emulators) are built into this checkout's extension: the tests need them.
export PE_EXT_TESTING ?= 1

.PHONY: setup build test lint sanitize bench clean

setup: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	touch $@

build: pe_ext/.build-stamp

pe_ext/.build-stamp: $(VENV)/.deps-stamp setup.py $(shell find csrc -type f)
	$(PY) -m pip install -q --no-build-isolation -e .
	$(PY) -c "import pe_ext; print('pe_ext backend:', pe_ext.backend())"
	touch $@

test: build
	$(PY) -m pytest -q tests

# Python with ruff, C++/CUDA with the repository's .clang-format (checked, not rewritten).
lint: setup
	$(VENV)/bin/ruff check .
	find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' | xargs $(VENV)/bin/clang-format --dry-run -Werror

# The C++ CPU code under ASan + UBSan, built into a scratch copy (the normal build is left alone).
sanitize: setup
	PYTHON=$(PY) .ci/sanitize.sh

# Every op family's benchmark (bench/bench_<op>.py), each into bench/results/<op>/<device>/.
bench: build
	for script in bench/bench_*.py; do $(PY) $$script $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf build pe_ext/_C*.so pe_ext/.build-stamp *.egg-info
