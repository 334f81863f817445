#!/usr/bin/env bash
# Builds pe_ext (CUDA kernels included where nvcc is found) against another torch release in its own virtual
# environment and scratch copy, then runs the test suite there; the checkout's build is left alone. The GPU image runs
# torch 2.11, older than the Makefile's pin: run this before a GPU session, or after touching the C++ API surface.
#
#   .ci/torch_version_check.sh [VERSION] [PYTEST_ARGS...]    # VERSION defaults to 2.11.0; VENV=... reuses a venv
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-2.11.0}
shift || true
venv=${VENV:-/tmp/pe_ext-torch-$version}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==$version" numpy ninja pybind11 setuptools wheel pytest hypothesis
fi
py="$venv/bin/python"

work=$(mktemp -d "${TMPDIR:-/tmp}/pe_ext-torch-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r setup.py pyproject.toml csrc pe_ext tests examples "$work"/
rm -f "$work"/pe_ext/_C*.so
cd "$work"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PE_EXT_TESTING=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
"$py" setup.py -q build_ext --inplace >build.log 2>&1 || { grep -E "error" build.log | head -20; exit 1; }
"$py" -c 'import torch, pe_ext; print("torch", torch.__version__, "pe_ext backend:", pe_ext.backend())'
"$py" -m pytest -q -p no:cacheprovider tests "$@"
