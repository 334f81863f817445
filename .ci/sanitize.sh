#!/usr/bin/env bash
# The C++ CPU kernels (and the CUDA kernel body, through the grid emulator) under AddressSanitizer and
# UndefinedBehaviorSanitizer: builds a sanitized CPU-only copy of the extension in a scratch directory, leaving the
# normal build alone, and runs the test suite against it (all but the tests marked slow, and the deploy, compile and
# opcheck tests) with libasan preloaded.
# Any sanitizer report fails the run.
#
#   .ci/sanitize.sh [PYTEST_ARGS...]    # PYTHON=... (default .venv/bin/python); CXX=... the compiler torch builds with
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-.venv/bin/python}
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute, not resolved: a venv's python is a link
asan=$(${CXX:-c++} -print-file-name=libasan.so)
stdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
[ -f "$asan" ] || { echo "sanitize: libasan.so not found (got '$asan'); install the compiler's libasan" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pe_ext-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r setup.py pyproject.toml csrc pe_ext tests examples "$work"/
rm -f "$work"/pe_ext/_C*.so
cd "$work"

start=$SECONDS
env -u PE_EXT_FORCE_CUDA PE_EXT_SANITIZE=1 PE_EXT_FORCE_CPU=1 PE_EXT_TESTING=1 "$py" setup.py -q build_ext --inplace >build.log 2>&1 ||
  { cat build.log; exit 1; }
[[ $(ldd pe_ext/_C*.so) == *libasan* ]] || { echo "sanitize: the build is not instrumented" >&2; exit 1; }
echo "sanitize: built in $((SECONDS - start)) s"

# libasan first, as ASan requires; libstdc++ too, or ASan finds no C++ runtime to forward exceptions to at start-up
# (python does not link it) and aborts at the first error a check throws. detect_leaks=0: CPython and torch keep
# memory until exit by design, which LeakSanitizer would report.
export LD_PRELOAD="$asan $stdcxx"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The copy, not the checkout's (or an installed) pe_ext, must be the one under test.
"$py" -c 'import os, pe_ext._C as c; assert c.__file__.startswith(os.getcwd()), c.__file__'

start=$SECONDS
status=0
# --capture=sys: the sanitizers write to file descriptor 2, which pytest's default capture would swallow if the
# process dies.
# Left out for CI's time: the deploy, compile/export and opcheck tests spend their time in torch's exporters, compilers
# and op checker (minutes under ASan); the C++ ops they call are the ones the parity, error and autograd tests run.
"$py" -m pytest -q -p no:cacheprovider --capture=sys -m "not slow" --ignore-glob='tests/*/test_deploy.py' \
  --ignore-glob='tests/*/test_compile_export.py' --ignore-glob='tests/*/test_opcheck.py' tests "$@" 2>&1 |
  tee pytest.log || status=$?
unset LD_PRELOAD
echo "sanitize: tests ran in $((SECONDS - start)) s"
# A report from a subprocess, or one the exit status hid, fails the run too.
if grep -qE "==[0-9]+==ERROR: |runtime error: |Sanitizer: CHECK failed" pytest.log; then
  echo "sanitize: sanitizer report above" >&2
  status=1
fi
exit $status
